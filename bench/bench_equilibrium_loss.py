"""Time LOCE's pieces (P02): the equilibrium loss beside cross-entropy, and the feature memory.

Loss: one forward and one backward on the RoI logits of one P02 finetuning step (16 images x 128
sampled RoIs + 32 memory RoIs = 2 080 rows, 30 classes + background): ``F.cross_entropy`` (PyTorch,
the baseline) and ``kit.det.equilibrium_loss.equilibrium_loss`` (cross-entropy on ``z + log m``), and
the same at LVIS's size (1 024 RoIs x 1 204 columns: 2 images x 512 RoIs, 1 203 classes + background).
Mean score: one ``MeanScore.update`` with ``instance_mean_scores`` for 60 objects. Memory
(``kit.det.feature_memory``, 30 classes, queue 80, features 32 x 7 x 7 as the page): one
``enqueue`` of 16 jittered boxes x 60 objects, and one ``sample`` of 8 classes x 4 features by
``1 / m_c``. Threads: ``KIT_THREADS`` if set, else the cores available (``kit.setup``). Runs in a few seconds.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import kit
from kit.det.equilibrium_loss import MeanScore, equilibrium_loss, instance_mean_scores
from kit.det.feature_memory import FeatureMemory, sampling_probabilities
from _timing import loss_forward_backward, time_call  # bench/_timing.py, beside this script


def bench_losses(generator):
    for rows, columns in ((2080, 31), (1024, 1204)):
        logits = torch.randn(rows, columns, generator=generator, requires_grad=True)
        labels = torch.randint(0, columns, (rows,), generator=generator)
        m = torch.rand(columns, generator=generator) * 0.5 + 0.01
        ce = 1000 * time_call(loss_forward_backward(F.cross_entropy, logits, labels), repeats=20)
        ebl = 1000 * time_call(loss_forward_backward(lambda z, y: equilibrium_loss(z, y, m), logits, labels), repeats=20)
        print(f"Loss, logits ({rows}, {columns}), forward + backward")
        print(f"  cross-entropy (torch)    {ce:>8.3f} ms")
        print(f"  equilibrium loss (kit)   {ebl:>8.3f} ms   {ebl / ce:>5.1f}x cross-entropy")


def bench_memory(generator, classes=30, objects=60):
    tracker = MeanScore(classes)
    logits = torch.randn(2080, classes + 1, generator=generator)
    labels = torch.randint(0, classes + 1, (2080,), generator=generator)
    instance = torch.randint(0, objects, (2080,), generator=generator)
    labels = torch.where(labels > 0, instance % classes + 1, 0)  # one class per object id
    update = 1000 * time_call(lambda: tracker.update(*instance_mean_scores(logits.softmax(-1), labels, instance)), repeats=20)
    memory = FeatureMemory(classes, (32, 7, 7), queue_size=80)
    features = torch.randn(objects * 16, 32, 7, 7, generator=generator)
    object_labels = torch.randint(0, classes, (objects,), generator=generator).repeat_interleave(16)
    targets = torch.randn(objects * 16, 4, generator=generator)
    enqueue = 1000 * time_call(lambda: memory.enqueue(features, object_labels, targets), repeats=20)
    p = sampling_probabilities(tracker.foreground)
    sample = 1000 * time_call(lambda: memory.sample(p, 8, 4, generator=generator), repeats=50)
    print(f"Mean score and memory ({classes} classes, queue 80, features 32 x 7 x 7)")
    print(f"  mean-score update, {objects} objects       {update:>8.3f} ms")
    print(f"  enqueue {objects * 16} RoI features            {enqueue:>8.3f} ms")
    print(f"  sample 8 classes x 4 features by 1/m  {sample:>8.3f} ms")


def main():
    kit.setup(0)
    print(f"{torch.get_num_threads()} thread(s)")
    generator = torch.Generator().manual_seed(0)
    bench_losses(generator)
    bench_memory(generator)


if __name__ == "__main__":
    main()
