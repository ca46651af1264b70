"""Collect, distill and eval encode a prompt identically (a BOS-adding tokenizer; chat template on and off; a user template).

Collect encodes by its config and records the encoding in the manifest; distill copies the
dataset's encoding into the student's t3d.json; eval encodes with the student's recorded
encoding, or the dataset's with `--like`. Each stage is the code the command runs.
"""

import json

import pytest
from typer.testing import CliRunner

from t3d.dllm import load_model
from t3d.dllm.prompt_encoding import PromptEncoding, dataset_encoding
from t3d.dllm.tiny import build_checkpoint
from t3d.pipeline.collect import plan_run
from t3d.pipeline.config import CollectConfig, PromptConfig, TeacherConfig
from t3d.storage_schemas import Manifest
from t3d.trainer import evaluate as ev
from t3d.trainer.checkpoint import read_t3d_json
from t3d.trainer.config import build_config
from t3d.trainer.eval_cli import app

WORDS = ["<pad>", "<unk>", "<s>", "</s>", "<mask>", "user:", "system:", "assistant:", "what", "is", "2+2?", "Please", "reason",
         "step", "by", "step,", "and", "put", "your", "final", "answer", "within", "\\boxed{}."]  # fmt: skip
CHAT = "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} {% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
PROMPT = "what is 2+2?"


def bos_checkpoint(path, chat_template: bool):
    """A tiny model whose tokenizer adds `<s>` by default, with or without a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<unk>", mask_token="<mask>")  # fmt: skip
    tok.chat_template = CHAT if chat_template else None
    return build_checkpoint(path, vocab_size=len(WORDS), pad_id=0, eos_id=3, mask_id=4, max_position_embeddings=48, tokenizer=tok)


def collect_stage(tmp_path, teacher, **prompt_options):
    """What t3d-collect encodes, and the manifest it writes (the plan's own manifest config)."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": PROMPT, "answer": "4"}) + "\n")
    encoding = PromptEncoding(**prompt_options)
    plan = plan_run(CollectConfig(prompts=PromptConfig(prompts=str(prompts), encoding=encoding), teacher=TeacherConfig(model=str(teacher))))
    return list(plan.prompts.prompts[0].ids), plan.manifest_config()


VARIANTS = {
    "template": (True, {}),
    "no template": (False, {}),
    "template off on a templated tokenizer": (True, {"chat_template": False}),
    "user template": (True, {"user_template": "reason-boxed", "system_prompt": "what"}),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_collect_and_eval_like_the_dataset_encode_alike(tmp_path, variant):
    has_template, options = VARIANTS[variant]
    teacher = bos_checkpoint(tmp_path / "teacher", has_template)
    ids, collect_config = collect_stage(tmp_path, teacher, **options)
    tok = load_model(teacher).tokenizer
    assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id, "one BOS, first"
    if options.get("user_template"):
        assert tok.convert_ids_to_tokens(ids)[-3:] == ["within", "\\boxed{}.", "assistant:"]
    data = tmp_path / "data"
    Manifest(collect_config=collect_config).save(data)
    model = load_model(teacher)
    like = ev.like_dataset(data)
    encodings, notes = ev.resolve_encodings({"teacher": model}, like, str(data))
    assert ev.encode_prompt(model, ev.EvalPrompt(text=PROMPT), encodings["teacher"]) == ids
    assert notes == [f"prompt encoding of {data}: {like.describe()}"]


def test_collect_distill_and_eval_encode_alike(tmp_path, kit):
    """One real distillation step: the student's t3d.json carries the dataset's encoding, and eval uses it."""
    from t3d.trainer.loop import train

    teacher = bos_checkpoint(tmp_path / "teacher", chat_template=True)
    ids, collect_config = collect_stage(tmp_path, teacher, user_template="reason-boxed")
    data = kit.collect(tmp_path / "data", teacher, prompts=4, shards=1)
    manifest = Manifest.load(data)
    Manifest(collect_config=manifest.collect_config | collect_config, teacher=manifest.teacher, shards=manifest.shards).save(data)
    result = train(build_config(kit.flags(data, teacher, tmp_path / "out", max_steps=1)), log=lambda *a: None)
    recorded = read_t3d_json(result.student)["prompt_encoding"]
    assert recorded == dataset_encoding(collect_config).to_dict()
    student = load_model(result.student)
    encodings, notes = ev.resolve_encodings({"t3d": student, "teacher": load_model(teacher)})
    assert ev.encode_prompt(student, ev.EvalPrompt(text=PROMPT), encodings["t3d"]) == ids, "the student's own encoding"
    assert any("the models encode prompts differently" in n for n in notes), "the teacher has none recorded: it differs"


def test_eval_cli_says_when_a_models_encoding_differs_from_the_dataset(tmp_path):
    teacher = bos_checkpoint(tmp_path / "teacher", chat_template=True)
    _, collect_config = collect_stage(tmp_path, teacher, chat_template=False)
    data = tmp_path / "data"
    Manifest(collect_config=collect_config).save(data)
    (tmp_path / "q.jsonl").write_text(json.dumps({"prompt": PROMPT}) + "\n")
    common = ["--model", f"teacher={teacher}", "--prompts", tmp_path / "q.jsonl", "--steps-per-block", "4",
              "--samples-per-prompt", "1", "--max-new-tokens", "4", "--block-size", "4"]  # fmt: skip
    result = CliRunner().invoke(app, [str(a) for a in common + ["--like", data]])
    assert result.exit_code == 0, result.output
    assert f"prompt encoding of {data}: no chat template" in result.stderr
    bad = CliRunner().invoke(app, [str(a) for a in common + ["--like", tmp_path / "nowhere"]])
    assert bad.exit_code == 2 and bad.stderr.startswith(f"error: --like {tmp_path / 'nowhere'}: not a readable t3d dataset")
