"""model.py against independent references: float64 math, torch's SDPA, Hugging Face transformers."""

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import fresh_seed, tiny_config
from model import (GPT, Decoder, GPTConfig, KVCache, cache_bucket, check_sampling, mfu, peak_flops,
                   reference_attention, sample_next_token)


def test_padded_vocab_and_logit_shape():
    model = GPT(tiny_config())
    assert model.transformer.wte.weight.shape[0] == 128  # 97 padded to a multiple of 64
    logits, loss = model(torch.randint(0, 97, (3, 10)))
    assert logits.shape == (3, 10, 97) and loss is None


def test_last_logits_only_is_the_last_row_of_the_full_logits():
    model = GPT(tiny_config()).eval()
    randomize(model)
    idx = torch.randint(0, 97, (3, 11))
    with torch.no_grad():
        full, _ = model(idx)
        last, _ = model(idx, last_logits_only=True)
    assert last.shape == (3, 1, 97)
    torch.testing.assert_close(last, full[:, -1:], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="targets"):
        model(idx, idx, last_logits_only=True)


def test_loss_at_init_is_log_vocab():
    torch.manual_seed(torch.seed())
    model = GPT(tiny_config(vocab_size=500, n_embd=64))
    idx = torch.randint(0, 500, (8, 32))
    targets = torch.randint(0, 500, (8, 32))  # independent of the inputs: nothing to predict at init
    _, loss = model(idx, targets)
    assert abs(loss.item() - math.log(500)) < 0.05


def test_ignore_index():
    model = GPT(tiny_config())
    idx = torch.randint(0, 97, (2, 8))
    targets = torch.randint(0, 97, (2, 8))
    logits, _ = model(idx)
    masked = targets.clone()
    masked[:, :4] = -1
    _, loss = model(idx, masked)
    expected = torch.nn.functional.cross_entropy(logits[:, 4:].reshape(-1, 97), targets[:, 4:].reshape(-1))
    torch.testing.assert_close(loss, expected)


def test_reference_attention_matches_float64_math():
    q, k, v = (torch.randn(2, 3, 11, 8, dtype=torch.float64) for _ in range(3))
    scores = torch.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(8)
    i = torch.arange(11)
    scores[..., i[:, None] < i[None, :]] = -math.inf
    expected = torch.softmax(scores, dim=-1) @ v
    torch.testing.assert_close(reference_attention(q, k, v), expected)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_attention_paths_agree(dtype, tol):
    model = GPT(tiny_config()).to(dtype)
    idx = torch.randint(0, 97, (2, 32))
    outputs = {}
    for mode in ("reference", "sdpa"):
        for block in model.transformer.h:
            block.attn.attention = mode
        outputs[mode] = model(idx)[0].float()
    error = (outputs["sdpa"] - outputs["reference"]).norm() / outputs["reference"].norm()
    assert error < tol


def test_overfits_one_batch():
    torch.manual_seed(0)
    model = GPT(tiny_config())
    idx = torch.randint(0, 97, (4, 32))
    targets = torch.randint(0, 97, (4, 32))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        _, loss = model(idx, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1


def hf_gpt2(config):
    transformers = pytest.importorskip("transformers")
    hf_config = transformers.GPT2Config(n_positions=config.block_size, n_embd=config.n_embd, n_layer=config.n_layer,
                                        n_head=config.n_head, vocab_size=config.vocab_size, resid_pdrop=0.0,
                                        embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(hf_config).eval()


def randomize(module):
    # fresh random weights everywhere, biases and LayerNorm scales included, so no mismatch hides behind init values
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.1 + (1.0 if p.dim() == 1 else 0.0) * torch.rand(()))


@pytest.mark.parametrize("safetensors", [True, False], ids=["model.safetensors", "pytorch_model.bin"])
def test_loads_hugging_face_gpt2(tmp_path, safetensors):
    config = tiny_config()
    hf = hf_gpt2(config)
    randomize(hf)
    if safetensors:
        hf.save_pretrained(tmp_path)
    else:  # the older layout (recent transformers only writes safetensors): a pickled state dict
        hf.config.save_pretrained(tmp_path)
        torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    assert (tmp_path / ("model.safetensors" if safetensors else "pytorch_model.bin")).is_file()
    ours = GPT.from_hf_dir(str(tmp_path), attention="reference").eval()
    idx = torch.randint(0, config.vocab_size, (3, 20))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx)[0], hf(idx).logits, rtol=1e-4, atol=1e-4)


def test_hugging_face_folder_missing_weights_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file
    hf_gpt2(tiny_config()).save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    save_file({k: v for k, v in weights.items() if ".h.1." not in f".{k}"}, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="lacks .* weight"):
        GPT.from_hf_dir(str(tmp_path))


def test_hugging_face_config_that_is_not_this_gpt_is_refused(tmp_path):
    import json
    GPT(tiny_config()).export_hf(str(tmp_path))
    config = json.loads((tmp_path / "config.json").read_text())
    for change, message in (({"model_type": "llama"}, "not a GPT-2 config"), ({"n_embd": "32"}, "n_embd must be"),
                            ({"n_embd": 64, "n_head": 2}, "config.json and the weights disagree")):
        (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(ValueError, match=message):
            GPT.from_hf_dir(str(tmp_path))


@pytest.mark.parametrize("bias", [True, False])
def test_exports_to_hugging_face_gpt2(tmp_path, bias):
    transformers = pytest.importorskip("transformers")
    ours = GPT(tiny_config(bias=bias)).eval()
    randomize(ours)
    ours.export_hf(str(tmp_path))
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path)).eval()
    assert hf.config.eos_token_id is None  # 97 tokens: GPT-2's end-of-text id 50256 is not among them
    idx = torch.randint(0, 97, (2, 25))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, ours(idx)[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_kv_cache_generates_the_same_tokens(temperature):
    model = GPT(tiny_config()).eval()
    randomize(model)
    prompt = torch.randint(0, 97, (2, 5))
    results = []
    for use_cache in (True, False):
        generator = torch.Generator().manual_seed(1234)
        # 40 new tokens run past block_size 32, exercising the fall-back past a full cache too
        tokens = list(model.generate(prompt, 40, temperature=temperature, use_cache=use_cache, generator=generator))
        results.append(torch.cat(tokens, dim=1))
    assert results[0].shape == (2, 40)
    assert torch.equal(results[0], results[1])


def test_decoder_reused_across_calls_matches_uncached():
    """One Decoder serves several generate calls (sample.py's samples): a longer prompt, then a shorter one whose
    cache slots past its position still hold the first call's keys and values, which must be ignored."""
    model = GPT(tiny_config()).eval()
    randomize(model)
    decoder = Decoder(model, 2)
    for length in (12, 4, 9):
        prompt = torch.randint(0, 97, (2, length))
        reused = torch.cat(list(model.generate(prompt, 15, temperature=0.0, decoder=decoder)), dim=1)
        uncached = torch.cat(list(model.generate(prompt, 15, temperature=0.0, use_cache=False)), dim=1)
        assert torch.equal(reused, uncached)
    with pytest.raises(ValueError, match="made for 2 rows"):
        next(model.generate(torch.zeros(3, 4, dtype=torch.long), 1, decoder=decoder))


def test_sampling_settings_are_checked_and_temperature_reshapes_the_distribution():
    for settings, problem in (((-1.0, None, None), "temperature must be 0"), ((1.0, -1, None), "top_k must be"),
                              ((1.0, None, 0.0), "top_p must be in"), ((1.0, None, 1.5), "top_p must be in")):
        with pytest.raises(ValueError, match=problem):
            check_sampling(*settings)
    # the frequencies of 40,000 draws at temperature 0.5 against softmax(logits / 0.5), computed in float64
    logits = torch.tensor([[1.0, 0.5, 0.0, -1.0]])
    generator = torch.Generator().manual_seed(0)
    draws = torch.cat([sample_next_token(logits.expand(1000, 4), 0.5, generator=generator) for _ in range(40)])
    frequencies = torch.bincount(draws.flatten(), minlength=4).double() / draws.numel()
    expected = torch.softmax(logits.double()[0] / 0.5, dim=0)
    assert (frequencies - expected).abs().max() < 0.01  # 4 standard errors at p = 0.5 are 0.01


def test_cache_bucket():
    assert [cache_bucket(n, 1024) for n in (1, 256, 257, 516, 769, 1024)] == [256, 256, 512, 768, 1024, 1024]
    assert cache_bucket(17, 20, bucket=8) == 20


@pytest.mark.parametrize("attention", ["sdpa", "triton"])
def test_decode_step_with_tensor_position_matches_full_forward(attention):
    # the CUDA-graph decoder's path: position as a tensor, attention over a prefix of the cache buffer with the
    # unfilled slots masked, writing through the prefix into the full cache. Its logits for each new token must
    # equal those of a full forward over the sequence so far, computed by a twin with the plain-math attention.
    # attention='triton' decodes with flash_decode.flash_decode (in Triton's interpreter on the CPU).
    device = "cuda" if attention == "triton" and torch.cuda.is_available() else "cpu"
    model = GPT(tiny_config(attention=attention)).eval()
    randomize(model)
    reference = GPT(tiny_config(attention="reference")).eval()
    reference.load_state_dict(model.state_dict())
    model, reference = model.to(device), reference.to(device)
    config = model.config
    idx = torch.randint(0, 97, (3, 20), device=device)
    caches = [KVCache(3, config.n_head, config.block_size, config.n_embd // config.n_head, device, torch.float32)
              for _ in range(config.n_layer)]
    with torch.no_grad():
        model(idx[:, :8], kv_caches=caches, start_pos=0)  # prefill
        for position in range(8, 20):
            # as Decoder's graphs do: attend over a prefix of the slots (16, then 24 of the 32)
            bucket = cache_bucket(position + 1, config.block_size, bucket=8)
            prefixes = [cache.prefix(bucket) for cache in caches]
            step_logits, _ = model(idx[:, position:position + 1], kv_caches=prefixes,
                                   start_pos=torch.tensor([position], device=device))
            full_logits, _ = reference(idx[:, :position + 1])
            torch.testing.assert_close(step_logits[:, 0], full_logits[:, -1], rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("batch_size,compile,compile_mode,attention", [
    (1, False, "default", "sdpa"), (4, False, "default", "sdpa"), (4, True, "default", "sdpa"),
    (4, True, "max-autotune-no-cudagraphs", "sdpa"), (1, False, "default", "triton"), (4, True, "default", "triton"),
    (4, True, "max-autotune-no-cudagraphs", "triton")])
def test_cuda_graph_decoding_matches_eager(batch_size, compile, compile_mode, attention):
    # positions 240..299 of a 300-slot cache: the graph of the 256-slot bucket, then that of the last 44 slots.
    # attention='triton' decodes with flash_decode, over the bucket in the graph and the filled prefix eagerly.
    model = GPT(tiny_config(block_size=300, attention=attention)).cuda().eval()
    randomize(model)
    prompt = torch.randint(0, 97, (batch_size, 240), device="cuda")
    decoder = Decoder(model, batch_size, compile=compile, compile_mode=compile_mode)
    graphed = torch.cat(list(model.generate(prompt, 60, temperature=0.0, decoder=decoder)), dim=1)
    eager = torch.cat(list(model.generate(prompt, 60, temperature=0.0, cuda_graph=False)), dim=1)
    assert torch.equal(graphed, eager) and sorted(decoder.graphs) == [(256, True), (300, True)]
    # a second call reuses the recorded graphs, over a cache that still holds the first call's keys and values
    graphs = {key: graph for key, (graph, _) in decoder.graphs.items()}
    prompt = torch.randint(0, 97, (batch_size, 250), device="cuda")
    graphed = torch.cat(list(model.generate(prompt, 50, temperature=0.0, decoder=decoder)), dim=1)
    eager = torch.cat(list(model.generate(prompt, 50, temperature=0.0, cuda_graph=False)), dim=1)
    assert torch.equal(graphed, eager) and {key: graph for key, (graph, _) in decoder.graphs.items()} == graphs
    # sampling records graphs of its own, without the argmax, and draws what eager sampling draws
    sampled = [torch.cat(list(model.generate(prompt, 20, temperature=1.0, cuda_graph=graph, decoder=use,
                                             generator=torch.Generator("cuda").manual_seed(7))), dim=1)
               for graph, use in ((True, decoder), (False, None))]
    assert torch.equal(*sampled) and (256, False) in decoder.graphs and (300, False) in decoder.graphs


def test_generate_rejects_compile_modes_that_make_their_own_graphs():
    model = GPT(tiny_config()).eval()
    with pytest.raises(ValueError, match="compile_mode must be one of default, max-autotune-no-cudagraphs"):
        next(model.generate(torch.zeros(1, 3, dtype=torch.long), 1, compile=True, compile_mode="reduce-overhead"))


def test_generate_stops_at_eot():
    model = GPT(tiny_config()).eval()
    prompt = torch.randint(0, 97, (1, 3))
    first = next(model.generate(prompt, 1, temperature=0))
    tokens = list(model.generate(prompt, 10, temperature=0, eot_token=int(first)))
    assert len(tokens) == 1


def test_sampling_filters():
    logits = torch.randn(4, 50)
    greedy = logits.argmax(-1, keepdim=True)
    assert torch.equal(sample_next_token(logits, temperature=0), greedy)
    assert torch.equal(sample_next_token(logits, temperature=1.0, top_k=1), greedy)
    assert torch.equal(sample_next_token(logits, temperature=1.0, top_p=1e-6), greedy)
    # top_p keeps the smallest prefix (by probability) whose mass reaches p: check against a direct count
    probs = torch.softmax(logits, dim=-1)
    sorted_probs, _ = probs.sort(dim=-1, descending=True)
    allowed = (sorted_probs.cumsum(-1) - sorted_probs < 0.5).sum(-1)
    draws = torch.cat([sample_next_token(logits, top_p=0.5) for _ in range(200)], dim=1)
    ranks = (probs.gather(1, draws)[:, :, None] < probs[:, None, :]).sum(-1)  # rank of each drawn token
    assert (ranks < allowed[:, None]).all()


def test_flops_and_mfu_accounting():
    config = tiny_config()
    model = GPT(config)
    n = sum(p.numel() for p in model.parameters()) - config.block_size * config.n_embd
    assert model.num_params() == n
    assert model.flops_per_token(16) == 6 * n + 12 * config.n_layer * config.n_embd * 16
    assert peak_flops("cpu") is None and mfu(1e12, "cpu") is None


@pytest.mark.parametrize("name,peak", [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12),
                                       ("NVIDIA H100 NVL", 835e12), ("NVIDIA GH200 480GB", 989e12),
                                       ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA L4", 121e12), ("NVIDIA L40", None),
                                       ("NVIDIA L40S", 362e12), ("NVIDIA GeForce RTX 4090", 165e12)])
def test_peak_flops_by_gpu_name(name, peak, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert peak_flops("cuda") == peak
    if peak is not None:
        assert mfu(peak / 4, "cuda") == 0.25


def test_crop_block_size_and_set_dropout():
    model = GPT(tiny_config())
    model.crop_block_size(16)
    assert model.transformer.wpe.weight.shape[0] == 16
    model.set_dropout(0.3)
    assert all(m.p == 0.3 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    with pytest.raises(ValueError):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="attention"):
        tiny_config(attention="fast")
    with pytest.raises(ValueError, match="divisible"):
        tiny_config(n_embd=33)


@pytest.mark.parametrize("autocast", [False, True])
def test_fused_loss_matches_plain_cross_entropy(autocast, monkeypatch):
    import model
    monkeypatch.setattr(model, "FUSED_LOSS_CHUNK_ROWS", 40)  # several chunks, the last one ragged
    plain = GPT(tiny_config())
    fused = GPT(tiny_config(fused_loss=True))
    fused.load_state_dict(plain.state_dict())
    idx, targets = torch.randint(0, 97, (3, 32)), torch.randint(0, 97, (3, 32))
    targets[0, :7] = -1
    losses = []
    for model in (plain, fused):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            _, loss = model(idx, targets)
        loss.backward()
        losses.append(loss.item())
    tol = 2e-2 if autocast else 1e-5
    assert abs(losses[0] - losses[1]) < tol
    for (name, p), q in zip(plain.named_parameters(), fused.parameters()):
        assert (p.grad - q.grad).norm() <= tol * p.grad.norm() + 1e-7, name
    with torch.no_grad():  # evaluation keeps the plain path and its logits
        logits, loss = fused(idx, targets)
    assert logits is not None and abs(loss.item() - losses[0]) < tol
    if autocast:  # and the fused path did run in bf16 under CPU autocast (it once checked CUDA's autocast only)
        assert loss.item() != losses[1]


def test_bf16_residual_keeps_the_stream_in_bf16_and_follows_float64_math():
    """Training under bf16 autocast, the blocks add to a bf16 stream; the loss and every gradient stay within bf16
    rounding of the same model in float64. In evaluation, or without autocast, the flag changes nothing."""
    seed = fresh_seed()
    torch.manual_seed(seed)
    plain = GPT(tiny_config(fused_loss=True))
    lowp = GPT(tiny_config(fused_loss=True, bf16_residual=True))
    lowp.load_state_dict(plain.state_dict())
    exact = GPT(tiny_config()).double()
    exact.load_state_dict(plain.state_dict())
    idx, targets = torch.randint(0, 97, (3, 32)), torch.randint(0, 97, (3, 32))
    _, exact_loss = exact(idx, targets)
    exact_loss.backward()

    def stream_dtypes(model):  # what each block and the final layer norm receive
        seen = []
        layers = [*model.transformer.h, model.transformer.ln_f]
        hooks = [layer.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype)) for layer in layers]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, loss = model(idx, targets)
        for hook in hooks:
            hook.remove()
        return seen, loss

    seen, loss = stream_dtypes(lowp)
    assert seen == [torch.bfloat16] * 3, seed
    assert stream_dtypes(plain)[0] == [torch.float32] * 3  # the flag is what changed it
    assert stream_dtypes(lowp.eval())[0] == [torch.float32] * 3  # evaluation keeps the fp32 sums
    lowp.train()
    loss.backward()
    assert abs(loss.item() - exact_loss.item()) < 2e-2 * exact_loss.item(), seed
    for (name, p), q in zip(exact.named_parameters(), lowp.parameters()):
        assert (q.grad.double() - p.grad).norm() <= 3e-2 * p.grad.norm() + 1e-7, (name, seed)
    assert torch.equal(lowp(idx, targets)[1], plain(idx, targets)[1])  # no autocast: fp32 throughout, as without it


def test_fused_loss_refuses_float16():
    # its gradients, made in forward and divided by the token count, would underflow to 0 before loss scaling
    fused = GPT(tiny_config(fused_loss=True))
    idx, targets = torch.randint(0, 97, (2, 16)), torch.randint(0, 97, (2, 16))
    with torch.autocast("cpu", dtype=torch.float16), pytest.raises(ValueError, match="does not work in float16"):
        fused(idx, targets)


def test_triton_attention_trains_like_sdpa():
    """A GPT trained with our kernel follows the same loss curve as with SDPA, from the same seed (fp32; on a GPU
    if there is one, else in Triton's CPU interpreter, so the run is short)."""
    pytest.importorskip("triton")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    data = ((torch.arange(4000) % 7 + torch.randint(0, 3, (4000,))) % 97).to(device)  # something learnable
    curves = {}
    for attention in ("triton", "sdpa"):
        torch.manual_seed(0)
        model = GPT(tiny_config(attention=attention)).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        generator = torch.Generator().manual_seed(1)
        curves[attention] = []
        for _ in range(12):
            starts = torch.randint(0, len(data) - 33, (4,), generator=generator).tolist()
            x = torch.stack([data[i:i + 32] for i in starts])
            y = torch.stack([data[i + 1:i + 33] for i in starts])
            _, loss = model(x, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            curves[attention].append(loss.item())
    assert curves["triton"][-1] < curves["triton"][0] - 0.3  # it learned something
    for triton_loss, sdpa_loss in zip(curves["triton"], curves["sdpa"]):
        assert abs(triton_loss - sdpa_loss) < 1e-4


def test_auto_attention_takes_sdpa_past_the_kernels_head_dims(monkeypatch):
    """'auto' (our kernel, as on CUDA: forced here so that the CPU's interpreter runs it) hands head dims over 128 to
    SDPA instead of failing; 'triton' asked for by name refuses them; up to 128, 'auto' runs our kernel."""
    pytest.importorskip("triton")
    import model
    from flash_attention import FlashAttentionError
    device = "cuda" if torch.cuda.is_available() else "cpu"
    monkeypatch.setattr(model, "resolve_attention", lambda mode, device: "triton" if mode == "auto" else mode)
    for head_dim in (256, 32):
        q, k, v = (torch.randn(1, 2, 20, head_dim, device=device) for _ in range(3))
        sdpa = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        torch.testing.assert_close(model.attend(q, k, v, "auto"), sdpa, rtol=1e-4, atol=1e-5)
    calls = []
    monkeypatch.setattr("flash_attention.flash_attention", lambda *args, **kwargs: calls.append(1) or sdpa)
    model.attend(q, k, v, "auto")  # head dim 32: our kernel
    assert calls == [1]
    q = torch.randn(1, 2, 20, 256, device=device)
    monkeypatch.undo()
    with pytest.raises(FlashAttentionError, match="head dim 256"):
        model.attend(q, q, q, "triton")


def test_self_attention_gives_our_kernel_the_qkv_projection_whole(monkeypatch):
    """With our kernel the model hands each layer's (B, T, 3C) projection to flash_attention_qkv, which writes its
    gradient in one piece (the same math by another path, so only a count shows it); with dropout > 0 it says once
    that it takes SDPA instead, and does."""
    pytest.importorskip("triton")
    import flash_attention
    import model
    device = "cuda" if torch.cuda.is_available() else "cpu"
    monkeypatch.setattr(model, "resolve_attention", lambda mode, device: "triton" if mode == "auto" else mode)
    shapes, packed = [], flash_attention.flash_attention_qkv
    monkeypatch.setattr(flash_attention, "flash_attention_qkv",
                        lambda qkv, *args, **kwargs: shapes.append(tuple(qkv.shape)) or packed(qkv, *args, **kwargs))
    gpt = GPT(tiny_config(attention="auto")).to(device)
    reference = GPT(tiny_config(attention="reference")).to(device)
    reference.load_state_dict(gpt.state_dict())
    idx = torch.randint(0, 97, (2, 16), device=device)
    loss, reference_loss = gpt(idx, idx)[1], reference(idx, idx)[1]
    loss.backward()
    reference_loss.backward()
    assert shapes == [(2, 16, 96)] * 2  # both layers, the projection whole
    torch.testing.assert_close(loss, reference_loss, rtol=1e-5, atol=1e-6)
    for p, q in zip(gpt.parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6)
    shapes.clear()
    monkeypatch.setattr(model, "_warned_triton_dropout", False)
    gpt.set_dropout(0.1)
    with pytest.warns(UserWarning, match="has no dropout; using sdpa"):
        gpt(idx, idx)
    assert shapes == []


# the gaps a mutation audit found (each test fails on a plausible bug the suite let through)

def nucleus_reference(logits, temperature, top_k, top_p):
    """float64: softmax(logits / T), keep the top_k most likely, renormalize, then keep the smallest prefix (most
    likely first) whose mass reaches top_p, renormalized."""
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    order = probs.argsort(descending=True).tolist()
    if top_k:
        order = order[:top_k]
    mass = sum(probs[i].item() for i in order)
    kept, covered = [], 0.0
    for i in order:
        if top_p is not None and covered >= top_p:
            break
        kept.append(i)
        covered += probs[i].item() / mass
    expected = torch.zeros_like(probs)
    expected[kept] = probs[kept] / probs[kept].sum()
    return expected


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.7, 3, None), (1.3, None, 0.7), (0.8, 5, 0.6)])
def test_top_k_and_top_p_sample_the_renormalized_kept_tokens(temperature, top_k, top_p):
    """Frequencies of 40,000 draws against the float64 distribution. Kills: top-k keeping only the largest logit
    (kth = values[:, [0]]), and a nucleus cut at top_p / 2 (which the subset check of test_sampling_filters
    cannot see: a smaller nucleus still only draws allowed tokens)."""
    generator = torch.Generator().manual_seed(fresh_seed())
    while True:  # no token above 0.3 after temperature: the nucleus and the top-k set hold several tokens
        logits = torch.randn(8, generator=generator)
        if torch.softmax(logits / temperature, dim=-1).max() < 0.3:
            break
    expected = nucleus_reference(logits, temperature, top_k, top_p)
    draws = torch.cat([sample_next_token(logits.expand(1000, 8), temperature, top_k, top_p, generator)
                       for _ in range(40)])
    frequencies = torch.bincount(draws.flatten(), minlength=8).double() / draws.numel()
    assert (frequencies[expected == 0] == 0).all()
    assert (frequencies - expected).abs().max() < 0.012  # 5 standard errors at p = 0.5



def test_init_matches_hugging_face_gpt2_statistics():
    """GPT-2's init, as transformers implements it: N(0, 0.02) matrices and embeddings, the residual projections
    (c_proj) at 0.02 / sqrt(2 n_layer), zero biases, unit LayerNorm scales. Kills: c_proj at plain 0.02."""
    transformers = pytest.importorskip("transformers")
    shape = dict(n_layer=6, n_head=4, n_embd=128)
    ours = GPT(GPTConfig(block_size=64, vocab_size=512, bias=True, attention="sdpa", **shape))
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_positions=64, vocab_size=512, **shape))
    hf_params = dict(hf.named_parameters())
    names = [name for name, _ in ours.named_parameters()]
    assert set(names) <= set(hf_params) and any(name.endswith("c_proj.weight") for name in names)
    for name, p in ours.named_parameters():
        ours_values, hf_values = p.detach().double().flatten(), hf_params[name].detach().double().flatten()
        assert ours_values.numel() == hf_values.numel(), name
        hf_std = hf_values.std().item()
        if hf_std == 0:  # biases and LayerNorm parameters: constants
            assert torch.equal(ours_values, hf_values), name
        else:  # >= 8192 draws each: the sample std is within 1% of the true one, a wrong scale is off by 2x+
            assert ours_values.std().item() == pytest.approx(hf_std, rel=0.05), name
            assert abs(ours_values.mean().item()) < 0.05 * hf_std, name
