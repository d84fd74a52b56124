"""Analysis of trained models: effective receptive fields, sampling locations of deformable layers."""
