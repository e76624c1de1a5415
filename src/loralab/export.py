"""Export a trained model as a plain Hugging Face folder (a merged model, or a PEFT adapter)
with a model card.

    >>> from loralab import export
    >>> export("runs/lora-r6", "exported/lora-r6-merged", merge=True)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .adapters import CONFIG_NAME, MINILM_HUB_ID, class_names
from .api import load_trained, read_info
from .errors import LoralabError
from .fileio import write_text
from .methods import METHODS
from .pooling import pooling_of
from .settings import BINARY_NAMES, REGRESSION_LABELS, SCORE_LABELS
from .surgery import adapter_layers, merge_and_unload


def model_card(info: dict, base_model: str, merged: bool, adapter: bool) -> str:
    """A README.md in the Hugging Face model-card convention."""
    method = info.get("method", "unknown")
    rank = info.get("rank")
    acc = info.get("eval_accuracy")
    targets = info.get("targets")
    layers = ("every linear layer but the head" if targets == "all-linear" else
              f"the layers matching {targets!r}" if targets else "the query and value layers")
    alpha = info.get("alpha", 2 * (rank or 0))
    how = METHODS[method].made_by(rank, alpha, layers) if method in METHODS else method
    labels = list(info.get("labels") or BINARY_NAMES)
    sentiment = tuple(labels) == BINARY_NAMES
    regression = tuple(labels) == REGRESSION_LABELS
    if adapter:
        load = ("```python\nfrom transformers import AutoModelForSequenceClassification\n"
                "from peft import PeftModel\n\n"
                f"labels = {labels!r}\n"
                f"base = AutoModelForSequenceClassification.from_pretrained(\n    \"{base_model}\", "
                "num_labels=len(labels), id2label=dict(enumerate(labels)),\n"
                "    label2id={name: i for i, name in enumerate(labels)})\n"
                f"model = PeftModel.from_pretrained(base, \"PATH/TO/THIS/FOLDER\")\n```")
    else:
        load = ("```python\nfrom transformers import pipeline\n\n"
                "classify = pipeline(\"text-classification\", model=\"PATH/TO/THIS/FOLDER\")\n"
                f"classify(\"{'A wonderful film.' if sentiment else 'Some text to classify.'}\")\n```")
    front = ["---", "library_name: " + ("peft" if adapter else "transformers"), f"base_model: {base_model}",
             "pipeline_tag: text-classification", "tags:", "- loralab", f"- {method}",
             *(["- sentiment-analysis", "datasets:", "- imdb"] if sentiment else []),
             "metrics:", *(["- pearsonr", "- spearmanr"] if regression else ["- accuracy", "- f1"]), "---", ""]
    task = ("IMDB sentiment" if sentiment else "regression (a score per text)" if regression
            else f"{len(labels)}-class text classification")
    f1 = info.get("eval_macro_f1")
    body = [f"# {base_model} fine-tuned for {task} ({method}{f', r={rank}' if rank else ''})", "",
            f"Made with [loralab](https://pypi.org/project/loralab/) by {how}"
            f"{', with the adapter merged into the weights' if merged else ''}.", "",
            "| | |", "|---|---|",
            f"| base model | {base_model} |", f"| method | {method} |",
            f"| rank | {rank if rank is not None else '-'} |",
            f"| trainable parameters | {info.get('trainable_params', 0):,} |",
            *(["| training data | IMDB movie reviews (Maas et al. 2011), lab sample |"] if sentiment else []),
            *([f"| eval accuracy | {acc:.4f} |" if acc is not None else "| eval accuracy | not measured |"]
              if not regression else []),
            *([f"| eval macro-F1 | {f1:.4f} |"] if f1 is not None else []),
            *(f"| eval {SCORE_LABELS[k]} | {info[f'eval_{k}']:.4f} |" for k in ("pearson", "spearman", "mse")
              if info.get(f"eval_{k}") is not None),
            "", "## Labels", "", "| id | label |", "|---:|---|",
            *[f"| {i} | {name} |" for i, name in enumerate(labels)], "", "## How to load it", "", load, ""]
    return "\n".join(front + body)


def export(model_dir: str | os.PathLike, out: str | os.PathLike, *, merge: bool = False,
           overwrite: bool = False) -> Path:
    """Export a trained model as a plain Hugging Face folder with a model card.

    With `merge`, a LoRA adapter is merged into its base model and the result saved as a
    regular model (config, safetensors weights, tokenizer) that
    `transformers.pipeline("text-classification", model=out)` loads without loralab.
    Without it, an adapter is exported in PEFT's format and a full or head-tuned model as
    it is.

    `out` is a new folder, or one an earlier export wrote; `overwrite` lets it be a folder
    of the user's, whose files are kept (`loralab.outputs.check_output`). It may not be,
    hold or lie inside `model_dir` or the base model.
    """
    from .models import local_folder
    from .outputs import check_output, output_dir

    model_dir = Path(model_dir)
    info = read_info(model_dir)
    is_adapter = (model_dir / CONFIG_NAME).exists()
    base = (json.loads((model_dir / CONFIG_NAME).read_text()).get("base_model_name_or_path") if is_adapter
            else info.get("base_model")) or "unknown"
    check_output(out, "export", overwrite=overwrite,
                 inputs=[("MODEL_DIR", model_dir), ("the base model", local_folder(base))])
    base = MINILM_HUB_ID if base == "minilm" else base
    model, tokenizer = load_trained(model_dir)
    if pooling_of(model) != "cls":
        raise LoralabError(f"{model_dir} was trained with --pooling {pooling_of(model)}, which a plain "
                           "transformers model (or PEFT) cannot express: exported, it would read the first "
                           "token and predict differently. Serve it with `loralab predict` or "
                           "`loralab.load_trained`, or train with --pooling cls to export.")
    with output_dir(out, "export") as tmp:
        if is_adapter and not merge:
            for name in (CONFIG_NAME, "adapter_model.safetensors"):
                shutil.copy2(model_dir / name, tmp / name)
            tokenizer.save_pretrained(tmp)
        else:
            if adapter_layers(model):
                model = merge_and_unload(model)
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        info = {**info, "labels": class_names(model)}
        write_text(tmp / "README.md", model_card(info, base, merged=merge and is_adapter,
                                                 adapter=is_adapter and not merge))
    return Path(out)
