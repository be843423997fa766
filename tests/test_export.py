"""Export (experiments.export): a tiny model out to Hugging Face and GGUF layouts, read back by the
formats' own readers (safetensors, gguf) and by the import, with equal logits and tokens."""

import dataclasses
import json
import re

import gguf
import jax
import numpy as np
import pytest
from safetensors import safe_open

from data.chat import CHATML_TEMPLATE, PROJECT_TEMPLATE, chat_format, render, render_chatml
from model import transformer
from model.handle import LM
from tests.test_import import TEXT, tiny  # noqa: F401 - the imported-model fixture
from tests.tiny import project_lm, tiny_config

TEXTS = ["Who are you?", "Привет, мир! 12345 + 678 = 13023", "  two  spaces\tand a tab",
         "東京は大きい", "<|user|> typed, not special", "a\u2581mark"]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A model as the project trains them: its sentencepiece tokenizer, random weights."""
    d = tmp_path_factory.mktemp("export")
    return {"dir": d, "lm": project_lm(d, TEXT, seed=3, d_model=64, head_dim=16, d_ff=96,
                                       tie_embeddings=False)}


def _roundtrip(lm, fmt, dtype, d):
    from experiments.export import export_lm
    from experiments.import_model import import_model
    from train.stage import load_stage

    out = export_lm(lm, {"stage": "sft"}, fmt, dtype, d / f"{fmt}-{dtype}")
    import_model(str(out if fmt == "hf" else out / "model.gguf"), d / f"back-{fmt}-{dtype}")
    return out, load_stage(d / f"back-{fmt}-{dtype}" / "import")


def _logits(lm, ids):
    return np.asarray(transformer.forward(lm.params, jax.numpy.asarray([ids]), lm.cfg)[0][0])


@pytest.mark.parametrize("fmt,dtype", [("hf", "f32"), ("gguf", "f32"), ("gguf", "q8_0")])
def test_a_project_model_exported_and_imported_back_keeps_its_logits_and_tokens(project, fmt, dtype):
    from model.engine import SamplingConfig, generate

    lm = project["lm"]
    _, (back, meta) = _roundtrip(lm, fmt, dtype, project["dir"])
    assert meta["chat_format"] == "project"
    assert dataclasses.replace(back.cfg, init_std=lm.cfg.init_std) == lm.cfg  # all but the init
    assert all(back.tok.encode(t) == lm.tok.encode(t) for t in TEXTS)
    q = lm.prompt("Who are you?")
    assert back.prompt("Who are you?") == q
    want, got = _logits(lm, q), _logits(back, q)
    if dtype == "f32":
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        s = SamplingConfig(max_new_tokens=12, temperature=0.0, stop_tokens=lm.stop_ids)
        assert generate(back.params, back.cfg, [q], s).tokens == generate(lm.params, lm.cfg, [q], s).tokens
    else:  # q8_0: the import holds exactly the 8-bit blocks' values; the logits move a little
        from model.convert import hf_tensors

        q8 = gguf.GGMLQuantizationType.Q8_0
        got_w, want_w = hf_tensors(back.params, back.cfg), hf_tensors(lm.params, lm.cfg)
        for name, x in want_w.items():
            stored = x if x.ndim == 1 else gguf.quants.dequantize(gguf.quants.quantize(x, q8), q8)
            np.testing.assert_array_equal(got_w[name], stored.reshape(x.shape))
        err = np.abs(got - want).max() / np.abs(want).max()
        assert 0 < err < 0.1, err


def test_the_files_read_back_with_the_formats_own_readers_as_llama_requires(project):
    from experiments.export import export_lm

    lm, d = project["lm"], project["dir"]
    hf = export_lm(lm, {"stage": "sft"}, "hf", "bf16", d / "readers-hf")
    config = json.loads((hf / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["torch_dtype"] == "bfloat16"
    assert config["num_key_value_heads"] == 2 and config["tie_word_embeddings"] is False
    with safe_open(hf / "model.safetensors", "np") as fh:
        shapes = {k: fh.get_slice(k).get_shape() for k in fh.keys()}
        assert fh.get_slice("lm_head.weight").get_dtype() == "BF16"
    c = lm.cfg
    assert shapes["model.layers.1.self_attn.q_proj.weight"] == [c.n_heads * c.head_dim, c.d_model]
    assert shapes["model.layers.0.self_attn.k_proj.weight"] == [c.n_kv_heads * c.head_dim, c.d_model]
    assert shapes["model.layers.1.mlp.down_proj.weight"] == [c.d_model, c.d_ff]
    assert len(shapes) == 3 + 9 * c.n_layers  # embed, norm, head; 9 per layer
    tok_config = json.loads((hf / "tokenizer_config.json").read_text())
    assert tok_config["chat_template"] == PROJECT_TEMPLATE and (hf / "tokenizer.model").is_file()

    out = export_lm(lm, {"stage": "sft"}, "gguf", "f16", d / "readers-gguf")
    r = gguf.GGUFReader(out / "model.gguf")
    f = {k: v.contents() for k, v in r.fields.items()}
    assert f["general.architecture"] == "llama" and f["llama.block_count"] == c.n_layers
    assert f["llama.attention.head_count_kv"] == c.n_kv_heads and f["llama.context_length"] == c.max_seq_len
    assert f["tokenizer.ggml.model"] == "llama" and len(f["tokenizer.ggml.tokens"]) == lm.tok.vocab_size
    assert f["tokenizer.ggml.tokens"][f["tokenizer.ggml.eos_token_id"]] == "<|end|>"
    assert f["tokenizer.chat_template"] == PROJECT_TEMPLATE
    kinds = {t.name: t.tensor_type.name for t in r.tensors}
    want = {"token_embd.weight", "output.weight", "output_norm.weight"} | {
        f"blk.{i}.{n}.weight" for i in range(c.n_layers) for n in (
            "attn_norm", "ffn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate",
            "ffn_up", "ffn_down")}
    assert set(kinds) == want
    assert kinds["blk.0.attn_q.weight"] == "F16" and kinds["blk.0.attn_norm.weight"] == "F32"


def _jinja_ids(text, tok, specials):
    """The ids of a rendered chat template: special-token spellings become their ids (as the
    formats' tokenizers treat a template's output), the text between them plain text."""
    ids = []
    for part in re.split("(" + "|".join(map(re.escape, specials)) + ")", text):
        if part in specials:
            ids.append(tok.special_token_id(part))
        elif part:
            ids += tok.encode(part)
    return ids


def test_the_chat_templates_render_as_the_formats_do(project):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from data.special_tokens import SPECIAL_TOKENS

    env = ImmutableSandboxedEnvironment()
    tok = project["lm"].tok
    conv = {"messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 6*7?"},
        {"role": "assistant", "content": "Let me compute.",
         "tool_call": {"name": "python", "input": "print(6*7)"}},
        {"role": "tool", "name": "python", "content": "42"},
        {"role": "assistant", "content": " It is 42."}]}
    plain = {"messages": conv["messages"][:2]}
    text = env.from_string(PROJECT_TEMPLATE).render(
        messages=plain["messages"], add_generation_prompt=True, bos_token="<|bos|>")
    assert _jinja_ids(text, tok, SPECIAL_TOKENS) == render(plain, tok, for_prompt=True)[0]
    tool_turns = {"messages": conv["messages"][:5]}
    text = env.from_string(PROJECT_TEMPLATE).render(
        messages=tool_turns["messages"], add_generation_prompt=False, bos_token="<|bos|>")
    assert _jinja_ids(text, tok, SPECIAL_TOKENS) == render(tool_turns, tok)[0]


def test_chatml_template_with_a_default_system_renders_as_render_chatml(tiny):  # noqa: F811
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from data.hf_tokenizer import load_tokenizer

    tok = load_tokenizer(tiny["hf"])
    fmt = chat_format("chatml", "You are Tiny.")
    own = fmt.template(tok)  # the model's own template wins
    assert own == tok.config["chat_template"]
    ours = chat_format("chatml", 'Say "hi".').template(type("NoConfig", (), {"config": {}})())
    assert CHATML_TEMPLATE in ours
    msgs = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]
    text = ImmutableSandboxedEnvironment().from_string(ours).render(messages=msgs,
                                                                   add_generation_prompt=False)
    want = render_chatml({"messages": msgs}, tok, default_system='Say "hi".')[0]
    assert _jinja_ids(text, tok, ["<|im_start|>", "<|im_end|>"]) == want


def test_an_imported_model_goes_out_as_gguf_and_back_unchanged(tiny, tmp_path):  # noqa: F811
    from experiments.export import export_lm
    from experiments.import_model import import_model
    from train.stage import load_stage

    import_model(str(tiny["hf"]), tmp_path / "a")
    lm, meta = load_stage(tmp_path / "a" / "import")
    out = export_lm(lm, meta, "gguf", "f32", tmp_path / "out")
    import_model(str(out / "model.gguf"), tmp_path / "b")
    back, meta_b = load_stage(tmp_path / "b" / "import")
    assert meta_b["chat_format"] == "chatml" and back.chat.default_system == "You are Tiny."
    assert all(back.tok.encode(t) == lm.tok.encode(t) for t in TEXTS)
    np.testing.assert_allclose(_logits(back, [5, 6, 7, 8]), _logits(lm, [5, 6, 7, 8]),
                               rtol=1e-5, atol=1e-5)


def test_bad_requests_fail_in_one_line_and_write_nothing(project, tmp_path):
    from experiments.export import export_lm

    lm = project["lm"]
    with pytest.raises(ValueError, match="--format 'onnx'"):
        export_lm(lm, {}, "onnx", "f32", tmp_path / "a")
    with pytest.raises(ValueError, match="--dtype 'q8_0' is not written as hf"):
        export_lm(lm, {}, "hf", "q8_0", tmp_path / "a")
    for setting in ({"qk_norm": True}, {"logit_softcap": 30.0}):
        odd = LM(lm.params, tiny_config(**{**lm.cfg.to_dict(), **setting}), lm.tok, lm.chat)
        with pytest.raises(ValueError, match=next(iter(setting))):
            export_lm(odd, {}, "gguf", "f32", tmp_path / "a")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an empty directory"):
        export_lm(lm, {}, "hf", "f32", tmp_path / "full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]  # no partial output anywhere
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]


def test_run_py_alone_generates_the_engines_greedy_tokens(project):
    import subprocess
    import sys

    from experiments.export import export_lm
    from model.engine import SamplingConfig, generate

    lm = project["lm"]
    out = export_lm(lm, {"stage": "sft"}, "hf", "f32", project["dir"] / "two-files")
    for question in ("Who are you?", "Привет, мир! 12345 + 678"):
        # -I: isolated, so that nothing of the project is importable; numpy is all it has
        r = subprocess.run([sys.executable, "-I", str(out / "run.py"), str(out), "--prompt",
                            question, "--max_new_tokens", "12", "--ids"],
                           capture_output=True, text=True, cwd=out)
        assert r.returncode == 0, r.stderr
        want = generate(lm.params, lm.cfg, [lm.prompt(question)], SamplingConfig(
            max_new_tokens=12, temperature=0.0, stop_tokens=lm.stop_ids)).tokens[0]
        assert json.loads(r.stdout.strip().splitlines()[-1]) == want
    import importlib.util

    spec = importlib.util.spec_from_file_location("run_two_files", out / "run.py")
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    tok = run.Tokenizer(out / "tokenizer.model")
    assert all(tok.encode(t) == lm.tok.encode(t) for t in TEXTS + [TEXT])
    assert all(tok.decode(tok.encode(t)) == t for t in TEXTS)
    assert len((out / "run.py").read_text().splitlines()) <= 250
