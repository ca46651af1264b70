"""CollectConfig: one option per field, file < flags, checked ranges, what a resume must match."""

import pytest

from t3d.dllm.errors import UserError
from t3d.pipeline.config import CollectConfig, build_config, options, to_dict


def test_every_field_is_one_documented_option():
    opts = options()
    names = [o.name for o in opts]
    assert len(names) == len(set(names)), "a flat option name must identify one field"
    assert all(o.help for o in opts), [o.name for o in opts if not o.help]
    for flag in ("--prompts", "--model", "--out", "--num-workers", "--gpus-per-worker", "--rollouts-per-prompt",
                 "--max-new-tokens", "--block-size", "--steps-per-block", "--strategy", "--threshold",
                 "--temperature", "--logits-top-k", "--record-states", "--shard-size", "--limit", "--seed",
                 "--address", "--overwrite", "--trust-remote-code", "--chat-template"):
        assert flag in {o.flag for o in opts}, flag
    assert "record_states" not in {o.name for o in opts if o.path[-1:] == ("sampler",)}


def test_defaults_file_and_flags_layer_in_that_order():
    default = build_config({}, {})
    assert default == CollectConfig()
    file_values = {"temperature": 0, "rollout": {"batch_size": 8}, "num-workers": 3, "shard_size": 5}
    cfg = build_config(file_values, {"num_workers": 2, "limit": None})
    assert cfg.rollout.sampler.temperature == 0.0 and isinstance(cfg.rollout.sampler.temperature, float)
    assert cfg.rollout.batch_size == 8 and cfg.shard_size == 5
    assert cfg.cluster.num_workers == 2, "a flag overrides the file"
    assert cfg.prompts.limit is None, "a flag that was not given (None) leaves the value alone"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"tempreature": 1.0}, "unknown option 'tempreature'"),
        ({"num_workers": "two"}, "option 'num_workers' in cfg.toml must be int"),
        ({"overwrite": 1}, "option 'overwrite' in cfg.toml must be bool"),
        ({"num_workers": True}, "must be int"),
    ],
)
def test_bad_file_values_name_the_option(values, message):
    with pytest.raises(UserError, match=message):
        build_config(values, {}, source="cfg.toml")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"shard_size": 0}, "shard_size"),
        ({"num_workers": 0}, "num_workers"),
        ({"rollouts_per_prompt": 0}, "rollouts_per_prompt"),
        ({"record_states": "sparse"}, "record_states must be one of none, dense"),
        ({"on_long_prompt": "truncate"}, "on_long_prompt"),
        ({"gpus_per_worker": -1.0}, "gpus_per_worker"),
        ({"max_new_tokens": 10}, "multiple of block_size"),
        ({"strategy": "random"}, "unknown strategy"),
        ({"dtype": "int8"}, "--dtype must be one of auto, float32"),
        ({"family": "gpt2"}, "unknown model family 'gpt2'"),
        ({"seed": -1}, "seed"),
    ],
)
def test_ranges_are_checked(flags, message):
    with pytest.raises(UserError, match=message):
        build_config({}, flags)


def test_dataset_key_ignores_where_and_how_it_runs():
    a = build_config({}, {"num_workers": 1, "out": "a", "prompts": "x.jsonl", "model": "/m1"})
    b = build_config({}, {"num_workers": 4, "code_workers": 4, "gpus_per_worker": 1.0, "out": "b", "address": "h:1", "prompts": "y.jsonl", "model": "/m2"})
    assert a.dataset_key() == b.dataset_key()
    assert build_config({}, {"temperature": 0.5}).dataset_key() != a.dataset_key()
    assert build_config({}, {"seed": 1}).dataset_key() != a.dataset_key()
    assert build_config({}, {"record_states": "dense"}).rollout.sampler_config().record_states


def test_collect_records_with_any_strategy_and_measure_and_keys_its_dataset_by_them():
    cfg = build_config({}, {"strategy": "entropy_bounded", "confidence": "entropy", "entropy_budget": 2.0})
    sampler = cfg.rollout.sampler_config()
    assert (sampler.strategy, sampler.confidence, sampler.entropy_budget) == ("entropy_bounded", "entropy", 2.0)
    assert {"confidence": "entropy", "entropy_budget": 2.0}.items() <= cfg.dataset_key()["rollout"]["sampler"].items()
    assert build_config({}, {"confidence": "margin"}).dataset_key() != build_config({}, {}).dataset_key()
    with pytest.raises(UserError, match="unknown confidence"):
        build_config({}, {"confidence": "loss"})


RECORDED_KEY = {  # dataset_key of these flags, recorded from the code before PromptEncoding and LoadConfig were embedded
    "shard_size": 64, "seed": 0,
    "prompts": {"prompt_field": None, "answer_field": None, "tests_field": None, "limit": None, "chat_template": False,
                "system_prompt": "Be brief.", "user_template": "Q: {prompt}", "special_tokens": True, "on_long_prompt": "skip",
                "scorer": "auto"},
    "teacher": {"family": "sdar", "dtype": "bfloat16"},
    "rollout": {"rollouts_per_prompt": 4, "record_states": "none", "batch_size": 64,
                "sampler": {"max_new_tokens": 16, "block_size": 4, "steps_per_block": 4, "strategy": "static", "threshold": 0.9,
                            "temperature": 0.5, "top_k": 0, "top_p": 1.0, "logits_top_k": 8, "record_states": False,
                            "stop_at_eos": True, "cache": "auto"}},
}  # fmt: skip


def test_a_dataset_collected_before_the_embedded_configs_still_resumes():
    """The encoding and load settings live in PromptEncoding / LoadConfig, but the manifest keeps its keys."""
    flags = {"chat_template": False, "system_prompt": "Be brief.", "user_template": "Q: {prompt}", "dtype": "bfloat16",
             "family": "sdar", "temperature": 0.5}  # fmt: skip
    cfg = build_config({}, flags)
    assert cfg.dataset_key() == RECORDED_KEY
    assert cfg.prompts.encoding.system_prompt == "Be brief." and cfg.teacher.load.dtype == "bfloat16"
    written = to_dict(cfg)  # the manifest's config: each section's keys are its options, as a config file writes them
    assert written["teacher"] == {"model": "builtin", "family": "sdar", "dtype": "bfloat16", "trust_remote_code": False,
                                  "force_block_size": False}  # fmt: skip
    assert written["prompts"] == {"prompts": None, **RECORDED_KEY["prompts"], "setup_field": None}
    # --setup-field came later: unset, it stays out of the key (so that dataset resumes); set, it is part of it
    assert build_config({}, flags | {"setup_field": "helpers"}).dataset_key()["prompts"]["setup_field"] == "helpers"


def test_the_command_line_layers_defaults_file_flags_and_shows_defaults(tmp_path, tools):
    from typer.testing import CliRunner

    from t3d.pipeline.collect import build_app

    assert tools.config_from_args([]) == CollectConfig()
    file = tmp_path / "c.toml"
    file.write_text("limit = 3\nshard_size = 5\n[rollout]\ntemperature = 0.5\n")
    cfg = tools.config_from_args(["--config", str(file), "--shard-size", "7"])
    assert (cfg.prompts.limit, cfg.shard_size, cfg.rollout.sampler.temperature) == (3, 7, 0.5)
    text = CliRunner().invoke(build_app(), ["--help"], env={"COLUMNS": "250"}).output
    for flag, default in (("--shard-size", 64), ("--rollouts-per-prompt", 4), ("--threshold", 0.9), ("--out", "./runs/trajectories")):
        line = next(line for line in text.splitlines() if f" {flag} " in line)
        assert f"[default: ({default})]" in line, (flag, line)
