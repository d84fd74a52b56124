"""Networks: small backbones and necks, all randomly initialised (no pretrained weights)."""
