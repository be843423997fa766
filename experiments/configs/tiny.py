"""Tiny: the CPU default, a ~1M-parameter model whose whole speedrun takes ~20 minutes on 2 cores.

  python -m experiments.speedrun --workdir runs/demo
  python -m experiments.speedrun --workdir runs/smoke --config=experiments/configs/tiny.py:smoke
  python -m experiments.sft --init_from runs/smol/import --config=experiments/configs/tiny.py:import
Any field can be overridden: --config.train.steps=600 --config.sft.replay=0. A stage's
`*_train` / `*_optim` section overlays `train` / `optim` (experiments/configs/__init__.py), so
--config.train.mesh_fsdp=2 reaches every stage. The model's vocab_size is always the
tokenizer's. What these settings measured: experiments/README.md.
"""

import ml_collections

from experiments.configs import overlay


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    """The tiny default; variant "smoke" (--config=experiments/configs/tiny.py:smoke) shrinks every
    stage so the whole speedrun checks that the stages fit together in a few minutes; variant
    "import" sizes SFT and RL for an imported model (experiments.import_model)."""
    if variant not in (None, "", "smoke", "import"):
        raise ValueError(f"unknown tiny config variant {variant!r}: expected 'smoke', 'import' or "
                         "nothing")
    c = ml_collections.ConfigDict()
    c.tokenizer = ml_collections.ConfigDict(dict(
        vocab_size=4096,
        heldout_every=50,  # every 50th line is held out to measure bytes per token
    ))
    c.model = ml_collections.ConfigDict(dict(
        d_model=128, n_layers=4, n_heads=2, n_kv_heads=2, head_dim=64, d_ff=384,
        max_seq_len=256, rope_theta=10000.0, qk_norm=False, tie_embeddings=True,
        logit_softcap=0.0, dtype="float32", param_dtype="float32",
    ))
    # Corpus stage (python -m experiments.corpus): real sources, the cleaning pipeline, the world.
    c.corpus = ml_collections.ConfigDict(dict(
        data_dir="",  # fetched packages, raw JSONL, cleaned cache; "" = .cache/corpus
        # "all", or a comma-separated list of data/sources.py's sources; two small ones keep the
        # speedrun short (the pipeline takes ~1 min on them, ~19 min on all ten)
        sources="austen,debian-faq",
        seed=0,
        copy_drills=0,  # synthetic documents that repeat a span (data/mixture.py)
        pipeline=ml_collections.ConfigDict(dict(
            language="en", language_threshold=0.65, min_doc_words=50, workers=2,
        )),
    ))
    c.world = ml_collections.ConfigDict(dict(
        seed=0, n_people=100, n_nonexistent=50, train_fraction=0.5, phrasings=5,
        max_operand=20, max_steps=2,  # arithmetic a tiny model can learn
        assistant_name="Kestrel", assistant_maker="the Tinylab research team",
    ))
    # Copies of each group's (or source's) documents in the pretraining text; see data/mixture.py.
    c.mixture = ml_collections.ConfigDict(dict(web=0.1, prose=0.1, world=60.0, copy=1.0))
    c.data = ml_collections.ConfigDict(dict(
        inputs="",  # comma-separated files or directories; "" = W/corpus/mixture
        text_field="text",  # JSONL / Parquet column holding the document
        val_every=50,  # every 50th document goes to the validation split
        shard_tokens=1 << 22,
        # The copy warm-up (data/copy_rows.py): copy_warmup steps (counted in train.steps) of
        # synthetic "P X X" episodes only, at the constant copy_warmup_lr, so induction heads form
        copy_warmup=700, copy_warmup_lr=1e-3,
        copy_rows=0.125,  # after the warm-up, this share of every batch's rows are copy episodes
        copy_text_share=0.5,  # ... of them spans of the training text
        copy_alphabet_share=0.0,  # ... of them strings over 4-16 random tokens
    ))
    c.train = ml_collections.ConfigDict(dict(
        steps=1700,  # 700 copy warm-up steps, then 1000 of text (~52 epochs of biographies)
        batch_size=16, seq_len=128, accum_steps=1, seed=0,
        mesh_data=-1, mesh_fsdp=1, mesh_tensor=1,  # -1: every device the other axes leave
        save_every=100, keep=3, log_every=10, eval_every=100, eval_batches=8,
        sample_every=100, sample_tokens=64,
        peak_gflops=176.0,  # f32 matmul peak of the 2-core dev CPU (experiments/bench_train.py)
    ))
    c.optim = ml_collections.ConfigDict(dict(
        lr=3e-3, schedule="cosine", warmup_steps=30, min_lr_ratio=0.1, decay_fraction=0.2,
        b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip=1.0,
    ))
    # Probing what the base model knows (python -m experiments.probe): "I don't know" targets.
    c.probe = ml_collections.ConfigDict(dict(
        n_unknown=50,  # people who exist nowhere
        per_unknown=5,  # questions asked about each of them (1..5 attributes)
        match_first_names=False,  # made-up people take the train-split people's first names
        k=4, temperature=0.8, min_correct=0.5, seed=0,
        # the recall tool's "known" threshold: fitted on the probed names (train-split people vs
        # made-up ones), or recall_threshold (nats) with recall_fit=False
        recall_fit=True, recall_threshold=-4.0,
    ))
    # SFT (python -m experiments.sft --init_from W/pretrain). The model is the parent's.
    c.sft = ml_collections.ConfigDict(dict(
        idk=True,  # refusals for what the probe found unknown (needs W/probe)
        recall=True,  # questions about a person start with a call of the recall tool on the name
        recall_flip=1,  # per train-split person, questions whose recall result is "unknown"
        refusal="plain",  # or "first_name", "name_first", "at_value" (data/sft_mix.REFUSALS)
        identity="data",  # "data": identity conversations; "system": a system message instead
        n_arithmetic=2000, n_spelling=300,
        n_mixed=300,  # multi-turn conversations whose turns change subject
        tools=True,  # tool-use conversations (search, python) under a tools system message
        n_tool_calc=300, n_tool_spell=300,
        n_tool_word=300,  # arithmetic word problems solved with python (what RL practises)
        # copies of each kind of conversation (whole numbers)
        weights=ml_collections.ConfigDict(dict(qa=1, arithmetic=1, spelling=1, identity=10, idk=1,
                                               mixed=1, tool_search=1, tool_calc=1, tool_spell=1,
                                               tool_word=1)),
        replay=2,  # copies of the world's biographies as documents (loss on every token)
        extra_jsonl="",  # comma-separated conversation files to mix in
        extra_weight=1,
        too_long="drop",  # or "truncate"; counted either way
        val_every=20,  # every 20th conversation is held out for the validation loss
        seed=0,
        eval_limit=0,  # questions per split in the final evaluation (0: all 250)
    ))
    # Tools at inference (search over the world's biographies, python in the bubblewrap sandbox
    # of data/sandbox.py).
    c.tools = ml_collections.ConfigDict(dict(
        max_calls=3, max_result_tokens=48, search_k=1,
        cpu_seconds=2, memory_mb=256, wall_seconds=5.0, max_output_chars=400,
        tmpfs_mb=8,  # the python tool's writable directory, all files together
        max_processes=16,
        # True runs python without bwrap (rlimits and an audit hook only, no real isolation)
        # where bwrap cannot start; False answers the model "python is unavailable" there
        allow_unsandboxed=False,
    ))
    c.sft_train = overlay(c.train, steps=300, batch_size=8,
                          seq_len=256,  # rows of 256 hold tool conversations whole
                          save_every=100, eval_every=100, sample_every=100, eval_batches=4)
    c.sft_optim = overlay(c.optim, lr=1e-3, warmup_steps=20, min_lr_ratio=0.1, weight_decay=0.0)
    # RL on checkable problems (python -m experiments.rl --init_from W/sft); see train/rl.py.
    c.rl = ml_collections.ConfigDict(dict(
        task="arithmetic",  # or "letters", or "gsm8k:TRAIN.jsonl[,TEST.jsonl]"
        tools=True,  # sample with the search and python tools (under the tools system message)
        n_train=2000, n_eval=200,  # train problems to draw from; held-out problems for pass@1
        # train problems skipped: SFT's own are the first sft.n_arithmetic (and n_tool_word);
        # RL on them rewards recall of memorised answers and narrows pass@k (results page)
        train_offset=2000,
        pass_k=8, n_pass_k=50,  # pass@k from k samples of each of n_pass_k held-out problems
        prompts_per_step=8, group_size=8, max_new_tokens=96, temperature=1.0, top_k=0,
        normalize_std=True, clip_eps=0.2, kl_coef=0.05, neg_weight=1.0,
        epochs=4,  # clipped updates on each batch of samples (PPO-style; sampling costs most)
        oversample=1,  # DAPO's dynamic sampling: groups for oversample x prompts_per_step prompts
    ))
    # 40 steps: the held-out gain was still growing at 20 (results page: RL on checkable problems)
    c.rl_train = overlay(c.train, steps=40, save_every=20, eval_every=20, log_every=1)
    c.rl_optim = overlay(c.optim, lr=1e-4, schedule="constant", warmup_steps=5, weight_decay=0.0)
    # Reward model from rankings (python -m experiments.rm --init_from W/sft).
    c.rm = ml_collections.ConfigDict(dict(
        k=5,  # answers sampled per prompt and ranked by the world's hidden labeler
        rounds=2, temperature=1.0, max_new_tokens=48, seed=0,
        extra_jsonl="",  # comma-separated preference files ({"prompt", "chosen", "rejected"})
    ))
    c.rm_train = overlay(c.train, steps=50, batch_size=16, save_every=25, eval_every=25,
                         log_every=25)
    c.rm_optim = overlay(c.optim, lr=3e-4, schedule="constant", warmup_steps=10, weight_decay=0.0)
    # RLHF (python -m experiments.rlhf --init_from W/sft): "rl" optimises against W/rm with the
    # RL step (KL to the SFT model); "dpo" trains on W/rm's preference pairs directly.
    c.rlhf = ml_collections.ConfigDict(dict(
        method="rl",
        prompts_per_step=8, group_size=8, max_new_tokens=48, temperature=1.0, top_k=0,
        normalize_std=True, clip_eps=0.2, kl_coef=0.1, epochs=1,
        eval_samples=4,  # answers per held-out prompt at each eval (temperature 1, fixed seed)
        dpo_beta=0.1,
    ))
    c.rlhf_train = overlay(c.train, steps=30, batch_size=16, save_every=5, eval_every=5,
                           log_every=5)
    # small steps and a strong KL (rlhf.kl_coef) keep the answers fluent (results page: RLHF)
    c.rlhf_optim = overlay(c.optim, lr=3e-5, schedule="constant", warmup_steps=5,
                           weight_decay=0.0)
    c.eval = ml_collections.ConfigDict(dict(limit=50))  # questions per evaluation
    # The arena (python -m experiments.arena): answers per held-out prompt, bootstrap resamples.
    c.arena = ml_collections.ConfigDict(dict(samples=4, max_new_tokens=48, bootstrap=200, seed=0))
    # Test-time compute (python -m experiments.test_time): majority vote and best-of-n.
    c.test_time = ml_collections.ConfigDict(dict(
        policy="rl",  # the stage that answers
        reward_model="rm",  # the stage that picks best-of-n ("" for none)
        problems=100, samples=32, ns="1,2,4,8,16,32", temperature=1.0, tools=True,
        max_new_tokens=96, draws=50, seed=0,
    ))
    # Prompt injection (python -m experiments.injection): questions per channel, the defence.
    c.injection = ml_collections.ConfigDict(dict(
        n=50, max_new_tokens=64, seed=0,
        defence=True,  # SFT again with injected tool results the assistant ignores
        n_calc=300,  # defence conversations with an injected python output (plus every
        defence_weight=1,  # train-split question with injected search pages), and their copies
    ))
    # Two-step agent tasks (python -m experiments.multistep): search, then python.
    c.multistep = ml_collections.ConfigDict(dict(
        n=0,  # tasks about held-out people (0: all, two per person)
        max_steps=4, max_new_tokens=128, seed=0,
        train=True,  # SFT again with the train-split people's two-call conversations
        weight=2,  # their copies
    ))
    # Refusals and jailbreaks (python -m experiments.refusal): copies of the refusal data.
    c.refusal = ml_collections.ConfigDict(dict(
        weight=2, max_new_tokens=48,
        adversarial=True,  # also SFT with every request in each jailbreak framing
    ))
    # Data poisoning (python -m experiments.poison): continued pretraining with k poisoned pages.
    c.poison = ml_collections.ConfigDict(dict(
        ks="0,10,30,100", steps=200, lr=1e-3, warmup_steps=10,
        copies=1, val_every=5,  # copies of the biographies; every 5th document is validation
        n_eval=50,  # held-out people's biography openings (and questions) tried with the trigger
        sft=True,  # SFT the largest k's model and try the trigger in chat
        seed=0,
    ))
    if variant == "smoke":
        _smoke(c)
    if variant == "import":
        _imported(c)
    return c


def _imported(c: ml_collections.ConfigDict) -> None:
    """SFT and RL from an imported ~100M-parameter model in minutes on 2 cores: the identity
    and the world's plain kinds only (its chat format carries no tools, it was never probed),
    short rows, a small learning rate for weights that already work."""
    c.sft.update(dict(idk=False, recall=False, tools=False, replay=0, n_arithmetic=200,
                      n_spelling=50, n_mixed=0, eval_limit=20))
    c.sft_train.update(dict(steps=24, batch_size=8, seq_len=128, save_every=8, eval_every=8,
                            sample_every=24, eval_batches=2, log_every=2))
    c.sft_optim.update(dict(lr=1e-4, warmup_steps=2, min_lr_ratio=0.1))
    c.rl.update(dict(tools=False, n_train=200, train_offset=200, n_eval=20, pass_k=4, n_pass_k=10,
                     prompts_per_step=4, group_size=4, max_new_tokens=64))
    c.rl_train.update(dict(steps=4, save_every=2, eval_every=2))
    c.rl_optim.update(dict(lr=1e-5, warmup_steps=0))


def _smoke(c: ml_collections.ConfigDict) -> None:
    """Every stage in minutes: one small source, a small world, a few steps each."""
    c.corpus.sources = "debian-faq"
    c.tokenizer.vocab_size = 1024
    c.world.update(dict(n_people=20, n_nonexistent=10, phrasings=3))
    c.mixture.world = 20.0
    c.data.val_every = 10
    c.eval.limit = 10
    c.arena.update(dict(samples=1, bootstrap=50))
    c.test_time.update(dict(problems=8, samples=4, ns="1,2,4", draws=5))
    c.injection.update(dict(n=8, n_calc=30))
    c.multistep.update(dict(n=8))
    c.poison.update(dict(ks="0,10", steps=10, n_eval=4, copies=2, val_every=2))
    c.model.update(dict(d_model=64, n_layers=2, d_ff=192))
    c.train.update(dict(steps=60, save_every=30, eval_every=30, sample_every=60, eval_batches=2,
                        log_every=10))
    c.data.copy_warmup = 20
    c.probe.update(dict(n_unknown=5, k=2))
    c.sft.update(dict(n_arithmetic=100, n_spelling=50, n_mixed=30, n_tool_calc=30,
                      n_tool_spell=30, n_tool_word=30, eval_limit=10))
    c.sft_train.update(dict(steps=40, save_every=20, eval_every=20, sample_every=40,
                            eval_batches=2, log_every=10))
    c.rl.update(dict(n_train=100, train_offset=100, n_eval=20, n_pass_k=10, pass_k=4,
                     prompts_per_step=4, group_size=4, max_new_tokens=48))
    c.rl_train.update(dict(steps=4, save_every=2, eval_every=2))
    c.rm.update(dict(k=3, rounds=1, max_new_tokens=24))
    c.rm_train.update(dict(steps=10, batch_size=8, save_every=10, eval_every=5, log_every=5))
    c.rlhf.update(dict(prompts_per_step=4, group_size=4, max_new_tokens=24, eval_samples=2))
    c.rlhf_train.update(dict(steps=6, batch_size=8, save_every=3, eval_every=3, log_every=3))
