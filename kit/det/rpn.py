"""The region proposal network (Faster R-CNN, Ren et al. 2015, arXiv 1506.01497) on one feature map.

At every cell of a stride-16 map, ``A = len(anchor_sizes) * len(aspect_ratios)`` anchor boxes;
a 3x3 conv and two 1x1 convs (:class:`torchvision.models.detection.rpn.RPNHead`) score each
anchor's objectness and regress a box delta from it. Proposals are the decoded anchors, clipped
to the image, the ``pre_nms_topk`` best by objectness, NMS at 0.7, the ``post_nms_topk`` best
kept. Training: anchors with IoU >= 0.7 to an object (and each object's best anchors) are
positives, IoU < 0.3 negatives; 256 anchors per image are sampled, half positive at most;
binary cross-entropy on the objectness and smooth L1 (beta 1/9) on the positives' deltas,
normalised by the sampled count.

All of that is torchvision's :class:`~torchvision.models.detection.rpn.RegionProposalNetwork`,
which this module only adapts:

* it takes plain tensors — images (B, 3, H, W), the feature map (B, F, h, w), per-image ground
  truth boxes — and builds the :class:`~torchvision.models.detection.image_list.ImageList`, the
  one-level feature dict and the target dicts torchvision wants;
* the losses are computed whenever ground truth is given, in train or eval mode (torchvision's
  ``forward`` computes them only in train mode, and refuses to run in train mode without
  targets); the mode still chooses the train or test proposal counts;
* objectness and deltas are cast to float32 before decoding, so that under autocast the
  proposals stay float32 like the ground truth they are matched with.

The default anchors are scaled to the kit's 96-192 px images: sizes 8-128 px (orig. 32-512 on
~800 px images, Light-Head's C4 RPN), ratios 1:2, 1:1, 2:1. torchvision centres the anchors of a
cell on its top-left corner ``(col * 16, row * 16)``, as the original Caffe code did.
"""
from __future__ import annotations

import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead, concat_box_prediction_layers

__all__ = ["ANCHOR_SIZES", "ASPECT_RATIOS", "RPN", "region_proposal_network"]

ANCHOR_SIZES = (8, 16, 32, 64, 128)  # px, the square side of each anchor (orig. 32..512)
ASPECT_RATIOS = (0.5, 1.0, 2.0)  # height / width


class RPN(RegionProposalNetwork):
    """torchvision's RPN on a single feature map, called with tensors (see the module docstring)."""

    def forward(self, images: torch.Tensor, features: torch.Tensor,
                gt_boxes: list[torch.Tensor] | None = None) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """images (B, 3, H, W); features (B, F, h, w); gt_boxes [(M_i, 4)] xyxy px or None.

        Returns the proposals per image [(P_i, 4)] xyxy px (detached, best first, P_i <=
        ``post_nms_topk``) and the losses ``{"rpn_objectness", "rpn_box"}`` (empty without
        ground truth).
        """
        if features.dim() != 4 or features.shape[0] != images.shape[0]:
            raise ValueError(f"features must be one map (B, F, h, w) with B = {images.shape[0]} images, "
                             f"got {tuple(features.shape)}")
        image_list = ImageList(images, [tuple(images.shape[-2:])] * images.shape[0])
        objectness, deltas = self.head([features])  # [(B, A, h, w)], [(B, 4A, h, w)]
        anchors = self.anchor_generator(image_list, [features])  # [(h w A, 4)] per image
        num_anchors = [objectness[0][0].numel()]  # one level: h * w * A
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)  # (B h w A, 1), (B h w A, 4)
        objectness, deltas = objectness.float(), deltas.float()
        # Proposals are constants for the second stage: Faster R-CNN does not backpropagate through them.
        proposals = self.box_coder.decode(deltas.detach(), anchors).view(images.shape[0], -1, 4)
        boxes, _ = self.filter_proposals(proposals, objectness, image_list.image_sizes, num_anchors)
        if gt_boxes is None:
            return boxes, {}
        labels, matched = self.assign_targets_to_anchors(anchors, [{"boxes": b} for b in gt_boxes])
        targets = self.box_coder.encode(matched, anchors)  # [(h w A, 4)]
        loss_objectness, loss_box = self.compute_loss(objectness, deltas, labels, targets)
        return boxes, {"rpn_objectness": loss_objectness, "rpn_box": loss_box}


def _check_count(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def region_proposal_network(in_channels: int, anchor_sizes=ANCHOR_SIZES, aspect_ratios=ASPECT_RATIOS, *,
                            pre_nms_topk_train: int = 1000, post_nms_topk_train: int = 300,
                            pre_nms_topk_test: int = 500, post_nms_topk_test: int = 150,
                            nms_iou_threshold: float = 0.7, pos_iou_threshold: float = 0.7,
                            neg_iou_threshold: float = 0.3, num_sampled_anchors: int = 256,
                            positive_fraction: float = 0.5) -> RPN:
    """An :class:`RPN` on a map of ``in_channels``, with torchvision's defaults except the counts.

    The proposal counts are scaled to the kit's maps (a 128 px image at stride 16 has 8 x 8 x 15 =
    960 anchors; orig. Light-Head 12000/2000 train, 6000/1000 test): ``pre_nms_topk_*`` anchors
    by objectness go into NMS (``nms_iou_threshold``), ``post_nms_topk_*`` proposals come out.
    ``pos_iou_threshold`` / ``neg_iou_threshold``: the anchor labels; ``num_sampled_anchors`` per
    image with at most ``positive_fraction`` positives in the loss.
    """
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be an int >= 1, got {in_channels!r}")
    sizes, ratios = tuple(anchor_sizes), tuple(aspect_ratios)
    for name, values in (("anchor_sizes", sizes), ("aspect_ratios", ratios)):
        if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in values):
            raise ValueError(f"{name} must be a non-empty sequence of positive numbers, got {values!r}")
    counts = {"pre_nms_topk_train": pre_nms_topk_train, "post_nms_topk_train": post_nms_topk_train,
              "pre_nms_topk_test": pre_nms_topk_test, "post_nms_topk_test": post_nms_topk_test,
              "num_sampled_anchors": num_sampled_anchors}
    for name, value in counts.items():
        _check_count(name, value)
    if not 0 < nms_iou_threshold <= 1:
        raise ValueError(f"nms_iou_threshold must be in (0, 1], got {nms_iou_threshold}")
    if not 0 <= neg_iou_threshold <= pos_iou_threshold <= 1:
        raise ValueError(f"need 0 <= neg_iou_threshold <= pos_iou_threshold <= 1, got "
                         f"neg_iou_threshold={neg_iou_threshold}, pos_iou_threshold={pos_iou_threshold}")
    if not 0 < positive_fraction <= 1:
        raise ValueError(f"positive_fraction must be in (0, 1], got {positive_fraction}")
    anchors = AnchorGenerator((sizes,), (ratios,))  # one feature map: one tuple of sizes, one of ratios
    head = RPNHead(in_channels, anchors.num_anchors_per_location()[0])
    return RPN(anchors, head, pos_iou_threshold, neg_iou_threshold, num_sampled_anchors, positive_fraction,
               pre_nms_top_n={"training": pre_nms_topk_train, "testing": pre_nms_topk_test},
               post_nms_top_n={"training": post_nms_topk_train, "testing": post_nms_topk_test},
               nms_thresh=nms_iou_threshold)
