"""The base model: trained here or loaded from a local file, cached by what determines it."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from compress import store, zoo
from compress.data import DataSplits
from compress.train import Recipe, evaluate, fit, seed_everything


@dataclass
class BaseModel:
    model: zoo.SplitModel
    path: Path  # the cached checkpoint
    digest: str  # identifies these weights in every downstream cache key
    meta: dict = field(default_factory=dict)  # accuracies, training time, epochs, origin


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{str(path)!r} holds no state dict (a mapping of parameter names to tensors)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _load_weights(tv: torch.nn.Module, split: zoo.SplitModel, state: dict[str, torch.Tensor]) -> bool:
    """Load into the torchvision model or the split model, whichever naming matches.

    Returns True when every tensor fitted (nothing to train); tensors whose shapes differ (a classifier
    for another number of classes) are skipped and the model is fine-tuned from the rest.
    """
    for target in (split, tv):
        own = target.state_dict()
        if not set(state) & set(own):
            continue
        fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        target.load_state_dict(fitting, strict=False)
        return len(fitting) == len(own)
    raise ValueError("the weights file matches neither the torchvision nor the split naming of this model")


def base_model(arch: str, data: DataSplits, seed: int = 0, weights: str | Path | None = None,
               recipe: Recipe | None = None, progress: bool = True, log=print) -> BaseModel:
    """Return the base model for (arch, data set, input size, classes, seed), training it at most once.

    Without `weights` the model is trained from scratch with `recipe` (default Recipe()). With `weights`
    and no `recipe` it is used as loaded (only a mismatched classifier is trained, with Recipe()); with both,
    training continues from the weights, e.g. a model trained at a smaller input size (progressive resizing).
    """
    if recipe is None and not weights:
        recipe = Recipe()
    origin = {"weights": store.file_digest(weights) if weights else None}
    key = {"arch": arch, "dataset": data.name, "input_size": data.input_size, "classes": data.num_classes,
           "sizes": data.sizes(), "seed": seed, "recipe": recipe.key() if recipe else None, **origin}
    digest = store.digest(key)
    path = store.cache_root() / "base" / f"{arch}-{data.name}-{data.input_size}px-{digest}.pt"
    seed_everything(seed)
    tv = zoo.torchvision_model(arch, data.num_classes)
    model = zoo.build(arch, data.num_classes, data.input_size, source=tv)
    with store.locked(path):
        if path.exists():
            entry = store.load(path)
            model.load_state_dict(entry["state_dict"])
            model.eval()
            return BaseModel(model, path, digest, entry["meta"])
        complete = _load_weights(tv, model, _read_state_dict(Path(weights))) if weights else False
        start, history = time.perf_counter(), []
        if not complete or recipe is not None:
            recipe = recipe or Recipe()
            log(f"training {arch} on {data.name} at {data.input_size}px (seed {seed}, {recipe.epochs} epochs"
                f"{', from ' + str(weights) if weights else ''}); cached at {path}")
            history = fit(model, data, recipe, seed=seed, desc=f"train {arch}", progress=progress)
        val_acc, _ = evaluate(model, data, "val")
        test_acc, _ = evaluate(model, data, "test")
        meta = {**key, "val_acc": val_acc, "test_acc": test_acc, "epochs": len(history),
                "train_seconds": round(time.perf_counter() - start, 2), "history": history}
        store.save({"state_dict": model.state_dict(), "meta": meta}, path)
    return BaseModel(model, path, digest, meta)
