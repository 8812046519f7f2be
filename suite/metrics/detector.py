"""An instance-segmentation detector for GenEval, loaded through transformers from a local folder.

GenEval's reference evaluator uses Mask2Former (Swin-S) trained on COCO instances through mmdetection;
here the same architecture comes through transformers (``Mask2FormerForUniversalSegmentation``, e.g.
facebook/mask2former-swin-small-coco-instance saved with ``save_pretrained``). Class names come from the
model's ``id2label`` and must be GenEval's object names (COCO's 80 classes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import AutoImageProcessor, Mask2FormerForUniversalSegmentation

from suite.core.errors import UserError
from suite.metrics.geneval_rules import Detection

LAYOUT = (
    "a transformers Mask2Former folder (config.json, model.safetensors, preprocessor_config.json), "
    "e.g. facebook/mask2former-swin-small-coco-instance saved with save_pretrained"
)


def check_detector_folder(folder: str | Path, setting: str = "evaluation.geneval.detector") -> None:
    """One line naming the setting and the expected layout when the folder cannot hold a detector."""
    path = Path(folder)
    missing = [name for name in ("config.json", "preprocessor_config.json") if not (path / name).is_file()]
    if not path.is_dir() or missing:
        raise UserError(
            f"{setting}: no detector at {path} (missing {', '.join(missing) or 'folder'}); expected {LAYOUT}"
        )


class Mask2FormerDetector:
    """Detections (class name, confidence, box from the mask, mask) per image, at the image's size."""

    def __init__(self, folder: str | Path, device: torch.device):
        check_detector_folder(folder)
        self.folder, self.device = str(folder), device
        self.processor = AutoImageProcessor.from_pretrained(folder)
        self.model = Mask2FormerForUniversalSegmentation.from_pretrained(folder).to(device).eval()
        self.labels = {int(key): name for key, name in self.model.config.id2label.items()}

    @torch.no_grad()
    def __call__(self, images: list[np.ndarray]) -> list[list[Detection]]:
        inputs = self.processor(images=images, return_tensors="pt").to(self.device)
        outputs = self.model(**inputs)
        results = self.processor.post_process_instance_segmentation(
            outputs, threshold=0.0, target_sizes=[image.shape[:2] for image in images], return_binary_maps=True
        )
        detections = []
        for result in results:
            found = []
            masks = result["segmentation"]
            for index, segment in enumerate(result["segments_info"]):
                mask = masks[index].bool().cpu().numpy() if masks is not None and masks.dim() == 3 else None
                if mask is None or not mask.any():
                    continue
                rows, columns = np.nonzero(mask)
                box = (float(columns.min()), float(rows.min()), float(columns.max()), float(rows.max()))
                found.append(Detection(self.labels[int(segment["label_id"])], float(segment["score"]), box, mask))
            detections.append(found)
        return detections
