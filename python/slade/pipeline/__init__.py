"""The SLADE pipeline, step by step or as a whole (Duan et al. 2021; DESIGN.md §2).

One module per stage; each stage can be used alone and resumes from its own files when
given an ``out`` folder:

- :func:`train_ssl` (``ssl.py``): SwAV fine-tuning of the backbone on labeled + unlabeled
  images (Sec 3.1).
- :func:`train_teacher` (``teacher.py``): ranking loss on the labeled images (Sec 3.1).
- :func:`pseudo_label` (``pseudo_labels.py``): k-means of the teacher's embeddings of the
  unlabeled images (Sec 3.2). Called with a tensor of embeddings instead of a model it is
  :func:`slade.cluster.cluster_labels`.
- :func:`train_student` (``student.py``): labels + pseudo labels + feature basis (Sec 3.3).
- :func:`evaluate` (``evaluate.py``): MAP@R, R-Precision, P@1, Recall@K and NMI on the test
  (or validation) split (Musgrave et al. 2020); :func:`diagnose` (``diagnose.py``): does
  the student's mining filter noise.
- :func:`run` (``run.py``): all of them from a :class:`~slade.config.Config`, a loop over
  the stages with self-training rounds (the student of a round is the teacher of the next),
  checkpoints, results and plots.

``stages.py`` holds what the stages share: stage ids (``ssl``, ``teacher``,
``pseudo_labels_round<r>``, ``student_round<r>``: the names in callbacks, results, tables
and folders), stage files, the training loop, resume and progress. A training step's batch
and augmentation derive from (seed, stage, step), checkpoints are written atomically every
``checkpoint_every`` steps (and on Ctrl-C), so a run resumed after an interruption ends
with the same weights and metrics as an uninterrupted one.
"""

from .data_loading import load_data
from .diagnose import diagnose
from .evaluate import evaluate
from .inputs import load_trainer
from .pseudo_labels import PseudoLabels, pseudo_label
from .results import RunResult, results_table
from .run import run
from .ssl import train_ssl
from .stages import Callback
from .student import train_student
from .teacher import train_teacher

__all__ = [
    "load_data",
    "train_ssl",
    "train_teacher",
    "pseudo_label",
    "PseudoLabels",
    "train_student",
    "diagnose",
    "evaluate",
    "load_trainer",
    "run",
    "RunResult",
    "results_table",
    "Callback",
]
