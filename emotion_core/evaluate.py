"""Classification metrics, batched inference and the report images of a training run."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Metrics:
    """Accuracy, macro-F1, per-class recall and the confusion matrix (rows: truth, columns: prediction).

    Recall and macro-F1 cover the classes present in the true labels only: a model class with no
    samples has no recall (it is listed in ``labels_without_samples``), rather than a recall of 0.
    """

    accuracy: float
    macro_f1: float
    per_class_recall: dict[str, float]
    confusion: np.ndarray
    labels: tuple[str, ...]
    n: int
    per_class_precision: dict[str, float] = field(default_factory=dict)
    labels_without_samples: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return {
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "per_class_recall": self.per_class_recall,
            "labels_without_samples": list(self.labels_without_samples),
            "n": self.n,
        }

    def report(self) -> str:
        """A plain-text classification report."""
        lines = [f"{'label':<14}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
        support = self.confusion.sum(axis=1)
        for i, label in enumerate(self.labels):
            if label not in self.per_class_recall:
                continue
            p, r = self.per_class_precision[label], self.per_class_recall[label]
            f1 = 2 * p * r / (p + r) if p + r else 0.0
            lines.append(f"{label:<14}{p:>10.3f}{r:>10.3f}{f1:>10.3f}{int(support[i]):>10d}")
        lines.append(f"\naccuracy {self.accuracy:.4f}   macro-F1 {self.macro_f1:.4f}   n {self.n}")
        if self.labels_without_samples:
            absent = ", ".join(self.labels_without_samples)
            lines.append(f"model classes with no samples here (not scored): {absent}")
        return "\n".join(lines)


def compute_metrics(y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str]) -> Metrics:
    """Metrics of integer predictions; macro-F1 averages over classes present in ``y_true``."""
    k = len(labels)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true), np.asarray(y_pred)), 1)
    tp = np.diag(cm).astype(np.float64)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=(precision + recall) > 0)
    present = support > 0
    n = int(cm.sum())
    return Metrics(
        accuracy=float(tp.sum() / n) if n else 0.0,
        macro_f1=float(f1[present].mean()) if present.any() else 0.0,
        per_class_recall={lbl: float(recall[i]) for i, lbl in enumerate(labels) if present[i]},
        confusion=cm,
        labels=tuple(labels),
        n=n,
        per_class_precision={lbl: float(precision[i]) for i, lbl in enumerate(labels)},
        labels_without_samples=tuple(lbl for i, lbl in enumerate(labels) if not present[i]),
    )


def predict_probs(model, x: np.ndarray, batch_size: int = 256, flip_average: bool = False) -> np.ndarray:
    """Class probabilities for uint8 faces (N, s, s) or (N, s, s, 1), in inference mode.

    Calls the model directly (no ``predict``), batch by batch; with ``flip_average`` the
    horizontally flipped faces are classified too and the two probabilities averaged.
    """
    if x.ndim == 3:
        x = x[..., np.newaxis]
    out = []
    for start in range(0, len(x), batch_size):
        batch = x[start : start + batch_size].astype(np.float32)
        probs = _numpy(model(batch, training=False))
        if flip_average:
            probs = (probs + _numpy(model(np.ascontiguousarray(batch[:, :, ::-1]), training=False))) / 2
        out.append(probs)
    if not out:
        return np.zeros((0, model.output_shape[-1]), np.float32)
    return np.concatenate(out)


def _numpy(tensor) -> np.ndarray:
    return tensor.numpy() if hasattr(tensor, "numpy") else np.asarray(tensor)


def plot_confusion(metrics: Metrics, path: str | Path, title: str = "confusion matrix") -> None:
    """Save the row-normalised confusion matrix as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = metrics.confusion.astype(np.float64)
    norm = np.divide(cm, cm.sum(axis=1, keepdims=True), out=np.zeros_like(cm), where=cm.sum(axis=1, keepdims=True) > 0)
    k = len(metrics.labels)
    fig, ax = plt.subplots(figsize=(1.1 * k + 2, 1.1 * k + 1.5))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), metrics.labels, rotation=45, ha="right")
    ax.set_yticks(range(k), metrics.labels)
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                f"{norm[i, j]:.2f}\n{int(cm[i, j])}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if norm[i, j] > 0.5 else "black",
            )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title} (accuracy {metrics.accuracy:.3f}, macro-F1 {metrics.macro_f1:.3f})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_history(history: dict[str, list[float]], path: str | Path) -> None:
    """Save loss and accuracy curves (train and validation) per epoch as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for key, style in ((metric, "-"), (f"val_{metric}", "--")):
            if history.get(key):
                ax.plot(range(1, len(history[key]) + 1), history[key], style, label=key)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@dataclass
class LabelledFaces:
    """Face crops read from a folder-per-class tree, preprocessed for a model."""

    x: np.ndarray  # uint8 (N, size, size)
    y: np.ndarray  # indices into the model's labels
    skipped_labels: dict[str, int]  # folder labels the model does not know -> image count
    unreadable: int
    paths: tuple[str, ...] = ()  # each face's path relative to the root, aligned with x


def read_duplicate_list(tsv: str | Path) -> set[str]:
    """The public_test paths (``label/file``) that FER2013's ``train_duplicates_of_public_test.tsv``
    lists as copies of train images (second column, comma-separated)."""
    duplicates: set[str] = set()
    for line in Path(tsv).read_text().splitlines()[1:]:
        fields = line.split("\t")
        if len(fields) > 1:
            duplicates.update(p for p in fields[1].split(",") if p)
    return duplicates


def load_labelled_faces(
    root: str | Path,
    model_labels: Sequence[str],
    label_map: dict[str, str] | None = None,
    size: int = 48,
    workers: int = 4,
) -> LabelledFaces:
    """Read every image under ``root/<label>/`` as a face crop, preprocessed exactly as in training.

    Folder labels are renamed through ``label_map`` (``{"anger": "angry"}``) and those the model
    does not know are skipped and counted. Unreadable files are counted, not fatal.
    """
    from concurrent.futures import ThreadPoolExecutor

    from .dataset import preprocess_face
    from .discover import discover
    from .imageio import ImageError, decode, read_bytes

    found = discover(root)
    label_map = label_map or {}
    index = {label: i for i, label in enumerate(model_labels)}
    keep, skipped = [], {}
    for img in found.images:
        label = label_map.get(img.label, img.label)
        if label in index:
            keep.append((img.rel_path, index[label]))
        else:
            skipped[img.label] = skipped.get(img.label, 0) + 1

    def load(rel: str) -> np.ndarray | None:
        try:
            return preprocess_face(decode(read_bytes(found.root / rel), mode="gray"), size)
        except ImageError:
            return None

    with ThreadPoolExecutor(workers) as pool:
        faces = list(pool.map(load, [rel for rel, _ in keep]))
    good = [i for i, f in enumerate(faces) if f is not None]
    x = np.stack([faces[i] for i in good]) if good else np.zeros((0, size, size), np.uint8)
    y = np.array([keep[i][1] for i in good], dtype=np.int64)
    return LabelledFaces(x, y, skipped, len(faces) - len(good), tuple(keep[i][0] for i in good))
