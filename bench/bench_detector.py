"""Benchmark: shape-scene generation and one training step of the dense detectors.

Prints seconds per training step (forward + loss + backward + AdamW) for the ATSS baseline
and TOOD at the TOOD notebook's cpu-profile sizes (96 px, batch 16, 64 channels), and the
time to generate 1000 images. Run with `make bench` (or directly) on a quiet machine.
"""
import time

import torch

from kit.data.shapes import ShapeSceneConfig, generate
from kit.det import atss, tood
from kit.det.detector import dense_detector
from kit.runtime import available_cores


def time_steps(method: str, images, boxes, labels, repeats: int = 10) -> float:
    head_class = {"ATSS": atss.ATSSHead, "TOOD": tood.TOODHead}[method]
    model = dense_detector(head_class, 6, 64, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step():
        losses = model.loss(images, boxes, labels)  # TOOD: TAL (after its warm-up)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()

    for _ in range(3):  # warm-up
        step()
    began = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - began) / repeats


def main():
    torch.set_num_threads(available_cores())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    began = time.perf_counter()
    scenes = generate(ShapeSceneConfig(num_images=1000, image_size=96, seed=12345), use_cache=False)
    print(f"generate 1000 shape scenes (96 px, no cache): {time.perf_counter() - began:.2f} s")
    images, boxes, labels = scenes.batch(range(16))
    for method in ("ATSS", "TOOD"):
        print(f"{method} training step (96 px, batch 16): {time_steps(method, images, boxes, labels):.3f} s")


if __name__ == "__main__":
    main()
