"""The model card (README.md) an export carries: what the model is, how to load it, the data it learned
from, its settings and results, and the command that trains it again, from the run's record."""

from typing import Any

from engine.adapter import AdapterConfig
from engine.config import RunConfig
from engine.errors import ConfigError
from engine.reproduce import train_command

NOT_KNOWN = "not known: the adapter was exported without its run's record (run.json beside its folder)"


def model_card(config: AdapterConfig, fmt: str, record: dict[str, Any] | None, base: str) -> str:
    labels = ", ".join(config.labels)
    lora = config.lora
    front = [
        "---",
        f"library_name: {'peft' if fmt == 'peft' else 'transformers'}",
        "pipeline_tag: text-classification",
        f"base_model: {base}",
        "tags: [lora, lora-lab, gpt2, text-classification]",
        "---",
    ]
    what = (
        f"# GPT-2 message classifier ({labels}), fine-tuned with LoRA in LoRA Lab\n\n"
        f"GPT-2 ({config.base_model}) with LoRA of rank {lora.rank} on {', '.join(lora.targets)}, and a new class head "
        f"for {len(config.labels)} classes: {labels}. "
        + (
            "This folder is a PEFT LoRA adapter for transformers' `GPT2ForSequenceClassification`."
            if fmt == "peft"
            else "This folder is the whole model, every LoRA update merged into its weights."
        )
    )
    return "\n".join([*front, "", what, "", usage(config, fmt, base), "", data_section(record), "", settings_section(record), "", results_section(record), ""])


def usage(config: AdapterConfig, fmt: str, base: str) -> str:
    n = len(config.labels)
    labels = {i: label for i, label in enumerate(config.labels)}
    if fmt == "transformers":
        code = [
            "from transformers import pipeline",
            "",
            'classifier = pipeline("text-classification", model="PATH/TO/THIS/FOLDER")',
            'print(classifier("Win a free prize now!", truncation=True, top_k=None))',
        ]
    else:
        code = [
            "from peft import PeftModel",
            "from transformers import AutoTokenizer, GPT2ForSequenceClassification",
            "",
            f'base = GPT2ForSequenceClassification.from_pretrained("{base}", num_labels={n}, id2label={labels}, pad_token_id=50256)',
            'model = PeftModel.from_pretrained(base, "PATH/TO/THIS/FOLDER").eval()',
            'tokenizer = AutoTokenizer.from_pretrained("PATH/TO/THIS/FOLDER")',
            'inputs = tokenizer(["Win a free prize now!"], return_tensors="pt", truncation=True, padding=True)',
            "print(model(**inputs).logits.softmax(-1))",
        ]
    notes = [
        f"- Messages are read up to {config.max_length} tokens, as in LoRA Lab: pass `truncation=True` so longer ones are cut the same way.",
        "- `pad_token_id=50256` (GPT-2's <|endoftext|>) makes transformers read each message's last real token, as LoRA Lab does. "
        "LoRA Lab reads a literal `<|endoftext|>` typed in a message as ordinary text; transformers' tokenizer makes it the special token, "
        "so such messages may be answered differently.",
    ]
    return "## Use it\n\n```python\n" + "\n".join(code) + "\n```\n\n" + "\n".join(notes)


def data_section(record: dict[str, Any] | None) -> str:
    data = (record or {}).get("data")
    if not data:
        return f"## Data\n\n{NOT_KNOWN}."
    counts = ", ".join(f"{count:,} {name}" for name, count in (data.get("class_counts") or {}).items())
    return (
        f"## Data\n\nSource: `{data.get('source')}`: {data.get('messages', 0):,} messages ({counts}), balanced to {data.get('balanced', 0):,}, "
        f"split into {data.get('train', 0):,} for training, {data.get('validation', 0):,} for validation and {data.get('test', 0):,} for testing."
        + (" Repeated messages were dropped first." if data.get("deduplicated") else "")
    )


def settings_section(record: dict[str, Any] | None) -> str:
    try:
        cfg = RunConfig.from_dict((record or {}).get("config") or {})
    except ConfigError:
        return f"## Settings\n\n{NOT_KNOWN}."
    lora, train = cfg.lora, cfg.train
    rows = [
        ("preset", cfg.preset or "none"),
        ("LoRA rank, alpha, scaling", f"{lora.rank}, {lora.alpha:g}, {lora.scaling}"),
        ("layers adapted", ", ".join(lora.targets) + (" (and the head's own weights)" if lora.train_head else "")),
        ("learning rate, weight decay", f"{train.lr:g}, {train.weight_decay:g}"),
        ("epochs, batch size, steps", f"{train.epochs}, {train.batch_size}, {record.get('steps') if record else '?'}"),
        ("reading, padding", f"{train.pooling}, {train.padding}"),
        ("seed", str(train.seed)),
    ]
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    command = ((record or {}).get("reproduce") or {}).get("command")
    if command is None:
        try:
            command = train_command(cfg)
        except ConfigError as error:
            command = f"# {error}"
    return f"## Settings\n\n| setting | value |\n| --- | --- |\n{table}\n\n## Train it again\n\nWith LoRA Lab:\n\n```bash\n{command}\n```"


def results_section(record: dict[str, Any] | None) -> str:
    final = (record or {}).get("final")
    if not final:
        return "## Results\n\nNo final evaluation: the run was stopped early, or its record is not known."
    rows = []
    for split in ("train", "validation", "test"):
        m = final.get(split)
        if m:
            scores = " | ".join(_number(m.get(name)) for name in ("precision", "recall", "f1"))
            rows.append(f"| {split} | {100 * m['accuracy']:.2f}% | {scores} | {m['count']:,} |")
    head = "| split | accuracy | precision | recall | F1 | messages |\n| --- | --- | --- | --- | --- | --- |"
    said = "On every message of each split, after training (precision, recall and F1 of the positive class with two classes, else averaged):"
    return f"## Results\n\n{said}\n\n" + "\n".join([head, *rows])


def _number(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "-"
