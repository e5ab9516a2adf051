"""The jobs: each a function that reads top to bottom, standing above the library (only
the command line, and the lab, stand above them).

- ``train`` (``training``) and ``resume`` (``workers``: in the group size that wrote the
  checkpoint): a run folder from recipe to test accuracy;
- ``pretrain_stage`` (``stages``): staged pretraining, one stage at a time;
- ``finetune_pretrained`` (``saved``): a fine-tune of a saved pretrained net;
- ``worker_main``, ``train_workers``, ``probe``, ``probe_workers`` (``workers``): the
  same on N processes, and the learning-rate probe.
"""

from layerwise.jobs.saved import finetune_pretrained
from layerwise.jobs.stages import StageResult, pretrain_stage
from layerwise.jobs.training import train, train_in
from layerwise.jobs.workers import probe, probe_workers, resume, train_workers, worker_main
from layerwise.storage.runs import RunResult

__all__ = [
    "RunResult",
    "StageResult",
    "finetune_pretrained",
    "pretrain_stage",
    "probe",
    "probe_workers",
    "resume",
    "train",
    "train_in",
    "train_workers",
    "worker_main",
]
