#!/usr/bin/python3
"""Parity oracle for worker/models (LibTorch) against PyTorch references.

Usage: parity_oracle.py --dump-bin PATH --case CASE --dir TMPDIR

Runs `attune-parity-dump CASE TMPDIR/CASE.pt`, loads the dict it writes (see
tests/worker/parity_dump.cc for the keys), rebuilds the module in PyTorch
float32 from the dumped parameters, runs it on the dumped inputs and checks
every output; then backpropagates the dumped cotangents and checks every
gradient (parameters and inputs). Each compared tensor prints its max abs
difference on one line; the tolerance is 1e-5 per tensor.

The references are written from the doc comments of the public headers in
worker/models/include/attune/models/ and from the papers / PyTorch's own
modules, never from the C++ implementation:
  * multi-head attention: torch.nn.MultiheadAttention itself (run through
    torch.nn.utils.stateless.functional_call with the dumped tensors);
  * Swin window attention: the official Swin Transformer code
    (window_partition / window_reverse, relative_position_index, torch.roll,
    the img_mask attention mask of SwinTransformerBlock);
  * efficient attention: Shen et al. 2021, checked a second time in the
    quadratic order (ρq(Q) ρk(K)ᵀ) V;
  * gated attention-MIL (Ilse et al. 2018), SE (Hu et al. 2018), CBAM (Woo
    et al. 2018), Time2Vec (Kazemi et al. 2019), ViT patch embedding;
  * the rest (feature tokenizer, encoders, attention pool, hierarchical
    fusion, PersAM) from the header docs.
Where a header leaves a detail open the assumption is written next to the
code as "ASSUMPTION".

Every dumped parameter must be consumed by the reference and every parameter
the reference needs must be in the dump (coverage). Exit status: 0 pass,
1 mismatch / coverage failure / dump failure, 2 usage error.
"""

import argparse
import functools
import json
import math
import os
import re
import subprocess
import sys

import torch
import torch.nn.functional as F
from torch.nn.utils.stateless import functional_call

TOL = 1e-5
# ASSUMPTION: LayerNorm / GroupNorm eps 1e-5 (PyTorch's default; the headers
# do not say). The eps LibTorch reports is printed when it differs.
NORM_EPS = 1e-5

_REQUIRED = object()


class OracleError(Exception):
    """The dump does not have the structure the header docs describe."""


def natural_key(s):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


# ----------------------------------------------------------------------------
# Access to the dump: parameters (as grad-requiring leaves), inputs, config.


class Ctx:
    def __init__(self, dump, variant):
        self.dump = dump
        self.variant = variant
        self.params = {k[len("param."):]: v for k, v in dump.items() if k.startswith("param.")}
        self.inputs = {k[len("input."):]: v for k, v in dump.items() if k.startswith("input.")}
        self.buffers = {k[len("buffer."):]: v for k, v in dump.items() if k.startswith("buffer.")}
        self.leaves = {}      # parameter name -> leaf
        self.in_leaves = {}   # input name -> leaf (or the bool / int tensor)
        self.buf_used = set()
        self.notes = []
        self.extras = []      # (label, reference, dumped, tolerance): forward-only checks

    def note(self, msg):
        if msg not in self.notes:
            self.notes.append(msg)

    def cfg(self, key, default=_REQUIRED):
        t = self.dump.get("config." + key)
        if t is None:
            if default is _REQUIRED:
                raise OracleError("missing config." + key)
            return default
        return t.item()

    def inp(self, name):
        if name not in self.inputs:
            raise OracleError("missing input." + name)
        if name not in self.in_leaves:
            t = self.inputs[name].clone()
            if t.is_floating_point():
                t.requires_grad_(True)
            self.in_leaves[name] = t
        return self.in_leaves[name]

    def param(self, names):
        for n in names:
            if n in self.params:
                if n != names[0]:
                    self.note("parameter %r found as %r" % (names[0], n))
                if n not in self.leaves:
                    self.leaves[n] = self.params[n].clone().requires_grad_(True)
                return self.leaves[n]
        also = " (also tried %s)" % (names[1:],) if len(names) > 1 else ""
        raise OracleError("missing parameter %r%s" % (names[0], also))

    def has_param(self, name):
        return name in self.params

    def has_prefix(self, prefix):
        return any(n.startswith(prefix) for n in self.params)

    def buffer_like(self, shape, dtype):
        """The one dumped buffer of this shape and dtype, or None."""
        hits = [n for n, b in self.buffers.items() if tuple(b.shape) == tuple(shape) and b.dtype == dtype]
        if len(hits) != 1:
            return None, None
        self.buf_used.add(hits[0])
        return hits[0], self.buffers[hits[0]]

    def extra(self, label, reference, dumped, tol=TOL):
        self.extras.append((label, reference, dumped, tol))

    def exactly_zero(self, output, mask, what):
        """attention.h: masked entries get exactly 0 (no tolerance)."""
        got = self.dump.get("output." + output)
        if got is None:
            return  # reported as a missing output
        try:
            m = mask.expand_as(got)
        except RuntimeError:
            return  # reported as a shape mismatch
        self.extra("output.%s at %s (exactly 0)" % (output, what), torch.zeros(int(m.sum())), got[m], 0.0)


class Scope:
    """Parameters under a dotted prefix: S("weight"), S.sub("q_proj")."""

    def __init__(self, ctx, prefix=""):
        self.ctx = ctx
        self.prefix = prefix

    @property
    def name(self):
        return self.prefix[:-1]

    def __call__(self, *names):
        return self.ctx.param([self.prefix + n for n in names])

    def opt(self, *names):
        if any(self.ctx.has_param(self.prefix + n) for n in names):
            return self(*names)
        return None

    def sub(self, *alternatives):
        """The first alternative submodule that has parameters (aliases where the header is vague)."""
        for a in alternatives:
            if self.ctx.has_prefix(self.prefix + a + "."):
                if a != alternatives[0]:
                    self.ctx.note("submodule %r found as %r" % (self.prefix + alternatives[0], self.prefix + a))
                return Scope(self.ctx, self.prefix + a + ".")
        also = " (also tried %s)" % (alternatives[1:],) if len(alternatives) > 1 else ""
        raise OracleError("missing submodule %r%s" % (self.prefix + alternatives[0], also))

    def module_list(self, name):
        out = []
        while self.ctx.has_prefix("%s%s.%d." % (self.prefix, name, len(out))):
            out.append(Scope(self.ctx, "%s%s.%d." % (self.prefix, name, len(out))))
        return out


class Trace:
    """An expected AttentionTrace: exact `name` when the header gives it, else
    matched to a dumped trace by shape (then `keys` substrings, then order)."""

    def __init__(self, tensor, name=None, keys=(), role=""):
        self.tensor = tensor
        self.name = name
        self.keys = keys
        self.role = role or name or "/".join(keys)


# ----------------------------------------------------------------------------
# Building blocks.


def lin(S, x, bias=True):
    """nn.Linear's maths. bias: True required, False none, None if present."""
    w = S("weight")
    b = S("bias") if bias is True else (S.opt("bias") if bias is None else None)
    return F.linear(x, w, b)


def layer_norm(S, x):
    return F.layer_norm(x, (x.shape[-1],), S("weight"), S("bias"), NORM_EPS)


def masked_softmax(logits, mask, dim):
    """softmax over `dim` with masked entries 0 and an all-masked slice all 0
    (the convention of attention.h). Written so no NaN reaches autograd."""
    if mask is None:
        return logits.softmax(dim)
    mask = mask.expand_as(logits)
    every = mask.all(dim, keepdim=True)
    filled = logits.masked_fill(mask, float("-inf")).masked_fill(every, 0.0)
    return filled.softmax(dim).masked_fill(mask, 0.0)


@functools.lru_cache(maxsize=None)
def mha_module(d, heads, kdim, vdim):
    """One torch.nn.MultiheadAttention per shape (its own parameters are never
    used: functional_call substitutes the dumped ones)."""
    m = torch.nn.MultiheadAttention(d, heads, dropout=0.0, bias=True, batch_first=True, kdim=kdim, vdim=vdim)
    return m.eval()


def mha(S, query, key, value, pad, heads):
    """torch.nn.MultiheadAttention (batch_first, need_weights, per-head weights)
    with the q_proj / k_proj / v_proj / out_proj tensors of attention.h."""
    d = query.shape[-1]
    kdim, vdim = key.shape[-1], value.shape[-1]
    m = mha_module(d, heads, kdim, vdim)
    wq, wk, wv = S("q_proj.weight"), S("k_proj.weight"), S("v_proj.weight")
    bias = torch.cat([S("q_proj.bias"), S("k_proj.bias"), S("v_proj.bias")])
    tensors = {"in_proj_bias": bias, "out_proj.weight": S("out_proj.weight"), "out_proj.bias": S("out_proj.bias")}
    if m._qkv_same_embed_dim:
        tensors["in_proj_weight"] = torch.cat([wq, wk, wv])  # packed as nn.MultiheadAttention packs it
    else:
        tensors.update(q_proj_weight=wq, k_proj_weight=wk, v_proj_weight=wv)
    out, w = functional_call(m, tensors, (query, key, value),
                             {"key_padding_mask": pad, "need_weights": True, "average_attn_weights": False})
    return out, w


def efficient_attention(S, x, pad, heads, need_weights, quadratic):
    """Shen et al. 2021 per head: ρq(Q) (ρk(K)ᵀ V); ρq softmax over each
    query's features, ρk softmax over the tokens per key feature (padding
    excluded); no 1/√d. `quadratic` evaluates (ρq(Q) ρk(K)ᵀ) V instead.
    ASSUMPTION: heads are contiguous channel chunks (as in MHA and Shen's
    code); padded query tokens still get an output (only keys are masked)."""
    B, N, d = x.shape
    dh = d // heads

    def split(t):
        return t.view(B, N, heads, dh).transpose(1, 2)  # [B, h, N, dh]

    q = split(lin(S.sub("q_proj"), x))
    k = split(lin(S.sub("k_proj"), x))
    v = split(lin(S.sub("v_proj"), x))
    rq = q.softmax(-1)
    rk = masked_softmax(k, None if pad is None else pad[:, None, :, None], -2)
    keymaps = rk.transpose(-1, -2)  # [B, h, dh, N]
    if quadratic:
        out = (rq @ keymaps) @ v
    else:
        out = rq @ (keymaps @ v)
    out = lin(S.sub("out_proj"), out.transpose(1, 2).reshape(B, N, d))
    return out, (rq @ keymaps if need_weights else keymaps)


def transformer_block(S, x, pad, heads, linear=False, need_weights=False, quadratic=False):
    """Pre-norm block of blocks.h: h = x + Attn(LN(x)); out = h + FF(LN(h)),
    FF = Linear → GELU → Linear. ASSUMPTION: exact (erf) GELU."""
    y = layer_norm(S.sub("norm1"), x)
    if linear:
        a, w = efficient_attention(S.sub("attn", "linear", "mha"), y, pad, heads, need_weights, quadratic)
    else:
        a, w = mha(S.sub("attn", "mha", "linear"), y, y, y, pad, heads)
    h = x + a
    f = lin(S.sub("ff.2"), F.gelu(lin(S.sub("ff.0"), layer_norm(S.sub("norm2"), h))))
    return h + f, w


def cbam(S, x, kernel=None):
    """CBAM as blocks.h writes it: Mc = σ(MLP(avg) + MLP(max)), shared MLP
    mlp.0 → ReLU → mlp.2; Ms = σ(conv([mean_c; max_c])) with no bias;
    out = (x·Mc)·Ms. Note the header's channel order [mean; max] (the
    official CBAM code concatenates [max; mean]); the header is followed.
    ASSUMPTION: the MLP's Linear layers may or may not have biases (CBAM's
    code has them; the header gives only the weight shapes); 'same' padding
    k // 2 for the spatial conv."""
    def mlp(t):
        return lin(S.sub("mlp.2"), F.relu(lin(S.sub("mlp.0"), t, bias=None)), bias=None)

    mc = torch.sigmoid(mlp(x.mean((2, 3))) + mlp(x.amax((2, 3))))
    x1 = x * mc[:, :, None, None]
    conv = S.sub("conv", "spatial")
    w = conv("weight")
    if kernel is not None and tuple(w.shape[-2:]) != (kernel, kernel):
        raise OracleError("spatial conv weight %s, expected kernel %d" % (tuple(w.shape), kernel))
    ms = torch.sigmoid(F.conv2d(torch.cat([x1.mean(1, keepdim=True), x1.amax(1, keepdim=True)], 1),
                                w, None, padding=w.shape[-1] // 2))
    return x1 * ms, mc, ms[:, 0]


def time_encoding(S, hours):
    """Time2Vec: te[0] = ω0 t + φ0, te[i] = sin(ωi t + φi) (Linear(1, d))."""
    te = lin(S.sub("linear"), hours.unsqueeze(-1))
    return torch.cat([te[..., :1], torch.sin(te[..., 1:])], -1)


def attention_pool(S, x, mask):
    """α_j = softmax_j(qᵀ tanh(W x_j + b)), out = Σ α_j x_j; masked α = 0."""
    d = x.shape[-1]
    score = torch.tanh(lin(S.sub("proj"), x)) @ S("query").reshape(d)
    alpha = masked_softmax(score, mask, -1)
    return (alpha.unsqueeze(-1) * x).sum(1), alpha


def sequence_encoder(S, tokens, pad, heads, layers, linear=False, need_weights=False):
    """Class token first, transformer blocks (blocks.<i>), final LayerNorm
    (norm). ASSUMPTION: the final norm applies to every token and `vector` is
    the normed class token; padded tokens are not zeroed."""
    B, L, d = tokens.shape
    x = torch.cat([S("cls").reshape(1, 1, d).expand(B, 1, d), tokens], 1)
    full_pad = torch.cat([torch.zeros(B, 1, dtype=torch.bool), pad], 1)
    blocks = S.module_list("blocks")
    if len(blocks) != layers:
        raise OracleError("%sblocks: %d blocks in the dump, %d layers configured" % (S.prefix, len(blocks), layers))
    traces = []
    for i, blk in enumerate(blocks):
        x, w = transformer_block(blk, x, full_pad, heads, linear, need_weights)
        traces.append(Trace(w, keys=(), role="layer%d" % i))
    x = layer_norm(S.sub("norm"), x)
    return {"vector": x[:, 0], "tokens": x, "pad": full_pad}, traces


# ----------------------------------------------------------------------------
# Swin Transformer (Liu et al. 2021), ported from the official code.


def window_partition(x, window_size):
    B, H, W, C = x.shape
    x = x.view(B, H // window_size, window_size, W // window_size, window_size, C)
    windows = x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window_size, window_size, C)
    return windows


def window_reverse(windows, window_size, H, W):
    B = int(windows.shape[0] / (H * W / window_size / window_size))
    x = windows.view(B, H // window_size, W // window_size, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).contiguous().view(B, H, W, -1)
    return x


def relative_position_index(window_size):
    coords_h = torch.arange(window_size)
    coords_w = torch.arange(window_size)
    coords = torch.stack(torch.meshgrid([coords_h, coords_w], indexing="ij"))  # 2, Wh, Ww
    coords_flatten = torch.flatten(coords, 1)  # 2, Wh*Ww
    relative_coords = coords_flatten[:, :, None] - coords_flatten[:, None, :]  # 2, Wh*Ww, Wh*Ww
    relative_coords = relative_coords.permute(1, 2, 0).contiguous()  # Wh*Ww, Wh*Ww, 2
    relative_coords[:, :, 0] += window_size - 1  # shift to start from 0
    relative_coords[:, :, 1] += window_size - 1
    relative_coords[:, :, 0] *= 2 * window_size - 1
    return relative_coords.sum(-1)  # Wh*Ww, Wh*Ww


def shifted_window_mask(H, W, window_size, shift_size):
    """SwinTransformerBlock's attn_mask: 0 or -100 per (window, query, key)."""
    img_mask = torch.zeros((1, H, W, 1))  # 1 H W 1
    h_slices = (slice(0, -window_size), slice(-window_size, -shift_size), slice(-shift_size, None))
    w_slices = (slice(0, -window_size), slice(-window_size, -shift_size), slice(-shift_size, None))
    cnt = 0
    for h in h_slices:
        for w in w_slices:
            img_mask[:, h, w, :] = cnt
            cnt += 1
    mask_windows = window_partition(img_mask, window_size)  # nW, window_size, window_size, 1
    mask_windows = mask_windows.view(-1, window_size * window_size)
    attn_mask = mask_windows.unsqueeze(1) - mask_windows.unsqueeze(2)
    attn_mask = attn_mask.masked_fill(attn_mask != 0, float(-100.0)).masked_fill(attn_mask == 0, float(0.0))
    return attn_mask


def ref_window_attention(ctx):
    """The attention half of SwinTransformerBlock (no norm, no MLP, no
    residual: attention.h's WindowAttention is just that), with Swin's
    qk scale head_dim^-0.5 (ASSUMPTION: the header does not restate it)."""
    P = Scope(ctx)
    x = ctx.inp("x")
    ws, shift, heads = int(ctx.cfg("window")), int(ctx.cfg("shift")), int(ctx.cfg("heads"))
    B, H, W, C = x.shape
    N = ws * ws
    index = relative_position_index(ws)
    name, buf = ctx.buffer_like((N, N), torch.int64)
    if buf is not None:
        ctx.extra("buffer.%s (relative_position_index)" % name, index, buf)
    else:
        ctx.note("no unique int64 [w², w²] buffer to check against relative_position_index")
    table = P("relative_position_bias_table")

    shifted_x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2)) if shift > 0 else x
    x_windows = window_partition(shifted_x, ws).view(-1, N, C)
    attn_mask = shifted_window_mask(H, W, ws, shift) if shift > 0 else None

    # WindowAttention.forward
    B_ = x_windows.shape[0]
    qkv = lin(P.sub("qkv"), x_windows).reshape(B_, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    q = q * (C // heads) ** -0.5
    attn = q @ k.transpose(-2, -1)
    relative_position_bias = table[index.view(-1)].view(N, N, -1).permute(2, 0, 1).contiguous()
    attn = attn + relative_position_bias.unsqueeze(0)
    if attn_mask is not None:
        nW = attn_mask.shape[0]
        # Official: attn.view(B_ // nW, nW, heads, N, N) + mask.unsqueeze(1).unsqueeze(0), mask in {0, -100}.
        # attention.h promises masked keys get exactly 0, so -100 becomes -inf (a difference < 1e-40).
        blocked = (attn_mask != 0).unsqueeze(1).unsqueeze(0)
        attn = attn.view(B_ // nW, nW, heads, N, N).masked_fill(blocked, float("-inf")).view(-1, heads, N, N)
    attn = attn.softmax(-1)
    out = (attn @ v).transpose(1, 2).reshape(B_, N, C)
    out = lin(P.sub("proj"), out)

    # merge windows, reverse cyclic shift
    out = window_reverse(out.view(-1, ws, ws, C), ws, H, W)
    if shift > 0:
        out = torch.roll(out, shifts=(shift, shift), dims=(1, 2))
    weights = attn.view(B, B_ // B, heads, N, N)
    if attn_mask is not None:
        ctx.exactly_zero("weights", (attn_mask != 0).unsqueeze(0).unsqueeze(2), "masked pairs")
    return {"output": out, "weights": weights}, []


# ----------------------------------------------------------------------------
# One reference per case: ctx -> (outputs by name, expected traces).


def ref_sdpa(ctx):
    q, k, v, mask, bias = (ctx.inp(n) for n in ("q", "k", "v", "mask", "bias"))
    scale = ctx.cfg("scale") or 1.0 / math.sqrt(q.shape[-1])
    logits = q @ k.transpose(-1, -2) * scale + bias
    w = masked_softmax(logits, mask, -1)
    ctx.exactly_zero("weights", mask, "masked keys")
    return {"output": w @ v, "weights": w}, []


def ref_masked_softmax(ctx):
    logits, mask = ctx.inp("logits"), ctx.inp("mask")
    out = masked_softmax(logits, mask, int(ctx.cfg("dim")))
    ctx.exactly_zero("output", mask, "masked entries")
    return {"output": out}, []


def ref_mha_self(ctx):
    x, pad = ctx.inp("x"), ctx.inp("pad")
    out, w = mha(Scope(ctx), x, x, x, pad, int(ctx.cfg("heads")))
    return {"output": out, "weights": w}, []


def ref_mha_cross(ctx):
    query, kv, pad = ctx.inp("query"), ctx.inp("kv"), ctx.inp("pad")
    out, w = mha(Scope(ctx), query, kv, kv, pad, int(ctx.cfg("heads")))
    return {"output": out, "weights": w}, []


def coattention(S, a, b, pad_a, pad_b, heads):
    """a' = a + MHA_ab(a, b, b), b' = b + MHA_ba(b, a, a);
    fused = fuse([mean(a') ; mean(b')]) over unmasked tokens.
    ASSUMPTION: parameters ab, ba, fuse (the header names none); padded
    tokens of a'/b' are returned as computed, not zeroed."""
    oab, wab = mha(S.sub("ab"), a, b, b, pad_b, heads)
    oba, wba = mha(S.sub("ba"), b, a, a, pad_a, heads)
    a2, b2 = a + oab, b + oba

    def mean(t, pad):
        keep = (~pad).to(t.dtype).unsqueeze(-1)
        return (t * keep).sum(1) / keep.sum(1)

    fused = lin(S.sub("fuse"), torch.cat([mean(a2, pad_a), mean(b2, pad_b)], -1))
    return {"fused": fused, "a": a2, "b": b2, "weights_ab": wab, "weights_ba": wba}


def ref_coattention(ctx):
    return coattention(Scope(ctx), ctx.inp("a"), ctx.inp("b"), ctx.inp("pad_a"), ctx.inp("pad_b"),
                       int(ctx.cfg("heads"))), []


def ref_linear_attention(ctx):
    # ASSUMPTION: LinearAttention's parameters are q_proj/k_proj/v_proj/out_proj
    # like MultiHeadAttention's (the header lists the members, not the names).
    x, pad = ctx.inp("x"), ctx.inp("pad")
    out, w = efficient_attention(Scope(ctx), x, pad, int(ctx.cfg("heads")), bool(ctx.cfg("need_weights")),
                                 quadratic=ctx.variant == "quadratic")
    return {"output": out, "weights": w}, []


def ref_axial_attention(ctx):
    """MHA along each row (row), then along each column (col) of the rows'
    output. ASSUMPTION: no residual and no norm inside the module."""
    P = Scope(ctx)
    heads = int(ctx.cfg("heads"))
    x = ctx.inp("x")
    B, H, W, d = x.shape
    rows = x.reshape(B * H, W, d)
    y, rw = mha(P.sub("row"), rows, rows, rows, None, heads)
    y = y.view(B, H, W, d)
    cols = y.permute(0, 2, 1, 3).reshape(B * W, H, d)
    z, cw = mha(P.sub("col"), cols, cols, cols, None, heads)
    out = z.view(B, W, H, d).permute(0, 2, 1, 3)
    return {"output": out, "row_weights": rw.view(B, H, heads, W, W), "col_weights": cw.view(B, W, heads, H, H)}, []


def ref_transformer_block(ctx):
    x, pad = ctx.inp("x"), ctx.inp("pad")
    out, w = transformer_block(Scope(ctx), x, pad, int(ctx.cfg("heads")), bool(ctx.cfg("linear")),
                               bool(ctx.cfg("need_weights")))
    return {"output": out, "weights": w}, []


def ref_squeeze_excitation(ctx):
    P = Scope(ctx)
    x = ctx.inp("x")
    s = torch.sigmoid(lin(P.sub("fc2"), F.relu(lin(P.sub("fc1"), x.mean((2, 3))))))
    return {"output": x * s[:, :, None, None], "weights": s}, []


def ref_cbam(ctx):
    out, mc, ms = cbam(Scope(ctx), ctx.inp("x"), kernel=int(ctx.cfg("kernel")))
    return {"output": out, "channel_weights": mc, "spatial_weights": ms}, []


def hybrid_cnn(P, x, heads, layers):
    """The layout blocks.h states: per stage, a 3×3 conv (padding 1) →
    GroupNorm(min(4, C) groups) → ReLU, then CBAM (reduction 4, 7×7), then a
    2×2 max-pool; the (H/4 × W/4) map → tokens (to_tokens, row-major), the
    class token (cls) first, positions pos [1, 1 + N, d] over all of them;
    pre-norm blocks block<i>; vector = the class token's output."""
    traces = []
    for stage, cb in (("stage1", "cbam1"), ("stage2", "cbam2")):
        S = P.sub(stage)
        x = F.conv2d(x, S("0.weight"), S("0.bias"), padding=1)
        x = F.group_norm(x, min(4, x.shape[1]), S("1.weight"), S("1.bias"), NORM_EPS)
        x, mc, ms = cbam(P.sub(cb), F.relu(x))
        traces.append(Trace(mc, keys=("channel",), role=cb + " channel"))
        traces.append(Trace(ms, keys=("spatial",), role=cb + " spatial"))
        x = F.max_pool2d(x, 2, 2)
    B = x.shape[0]
    tokens = lin(P.sub("to_tokens"), x.flatten(2).transpose(1, 2))
    d = tokens.shape[2]
    x = torch.cat([P("cls").reshape(1, 1, d).expand(B, 1, d), tokens], 1) + P("pos")
    for i in range(layers):
        x, w = transformer_block(P.sub("block%d" % i), x, None, heads)
        traces.append(Trace(w, keys=(), role="block%d" % i))
    return {"vector": x[:, 0], "tokens": x}, traces


def ref_hybrid_cnn(ctx):
    return hybrid_cnn(Scope(ctx), ctx.inp("images"), int(ctx.cfg("heads")), int(ctx.cfg("layers")))


def ref_time_encoding(ctx):
    return {"output": time_encoding(Scope(ctx), ctx.inp("hours"))}, []


def ref_feature_tokenizer(ctx):
    P = Scope(ctx)
    x = ctx.inp("x")
    return {"output": x.unsqueeze(-1) * P("weight") + P("bias")}, []


def ref_sequence_encoder(ctx):
    return sequence_encoder(Scope(ctx), ctx.inp("tokens"), ctx.inp("pad"), int(ctx.cfg("heads")),
                            int(ctx.cfg("layers")))


def ref_event_encoder(ctx):
    """token = code(bucket) + (value·w_v + b_v) + TimeEncoding(t), then the
    sequence encoder (the header: `value` is a Linear(1, d) with bias)."""
    P = Scope(ctx)
    bucket, value, hours, pad = ctx.inp("bucket"), ctx.inp("value"), ctx.inp("hours"), ctx.inp("pad")
    tok = F.embedding(bucket, P("code.weight")) + lin(P.sub("value"), value.unsqueeze(-1))
    tok = tok + time_encoding(P.sub("time"), hours)
    return sequence_encoder(P.sub("encoder"), tok, pad, int(ctx.cfg("heads")), int(ctx.cfg("layers")))


def patch_embedding(P, images, patch):
    x = F.conv2d(images, P("proj.weight"), P("proj.bias"), stride=patch)
    return x.flatten(2).transpose(1, 2) + P("pos")


def ref_patch_embedding(ctx):
    return {"output": patch_embedding(Scope(ctx), ctx.inp("images"), int(ctx.cfg("patch")))}, []


def gated_mil(P, h, pad):
    """Ilse et al. 2018: a_k = softmax_k(wᵀ(tanh(V h_k) ⊙ σ(U h_k))), z = Σ a_k h_k."""
    gated = torch.tanh(lin(P.sub("V", "v"), h)) * torch.sigmoid(lin(P.sub("U", "u"), h))
    a = masked_softmax(lin(P.sub("w", "W"), gated).squeeze(-1), pad, -1)
    return (a.unsqueeze(-1) * h).sum(1), a


def ref_gated_mil(ctx):
    out, a = gated_mil(Scope(ctx), ctx.inp("h"), ctx.inp("pad"))
    return {"output": out, "weights": a}, []


def ref_attention_pool(ctx):
    out, alpha = attention_pool(Scope(ctx), ctx.inp("x"), ctx.inp("mask"))
    return {"output": out, "weights": alpha}, []


HIERARCHICAL_MODALITIES = ["ehr", "imaging", "genomics"]  # as parity_dump.cc constructs it


def ref_hierarchical_fusion(ctx):
    """h_m = AttentionPool_m(tokens_m, pad_m) (alpha.<m>), then β =
    AttentionPool(beta) over the h_m with the absent modalities masked;
    vector = Σ β_m h_m. ASSUMPTION: alpha.<m> is the ModuleList index (or
    the modality name)."""
    P = Scope(ctx)
    present = ctx.inp("present")
    hs, traces = [], []
    for i, m in enumerate(HIERARCHICAL_MODALITIES):
        h, alpha = attention_pool(P.sub("alpha.%d" % i, "alpha." + m), ctx.inp("tokens." + m), ctx.inp("pad." + m))
        hs.append(h)
        traces.append(Trace(alpha, name="fusion/alpha/" + m))
    vector, beta = attention_pool(P.sub("beta"), torch.stack(hs, 1), ~present)
    traces.append(Trace(beta, name="fusion/beta"))
    outs = {"vector": vector, "beta": beta}
    if "output.aux_loss" in ctx.dump:
        ctx.note("hierarchical fusion returned an aux_loss; the header implies none (checked against 0)")
        outs["aux_loss"] = torch.zeros(())
    return outs, traces


def persam(P, inst, clin, cpad, labels, heads, classes, layers, lam):
    """PersAM from fusion.h. ASSUMPTIONS where the header is silent:
    * parameters class_tokens [C, d], type_instance [M, d], type_clinical [d]
      (any shape with those element counts), blocks.<i>, norm, q, k, v,
      classifier (a Sequential run as LibTorch reports its children);
    * token order [class tokens; instance modality 0; 1; ...; clinical],
      padding mask [false × C; instance pads; clinical pad];
    * the final LayerNorm follows the blocks, before the q/k/v projections;
    * q, k, v are single-head projections d → d, s(x, y) = σ(xᵀy / √d_model);
    * padded instance tokens get a = ψ = a' = 0 and drop out of z, β and the
      MIL max; means over clinical tokens skip padded ones;
    * aux_loss = λ · mean over batch and classes of BCE(max_l a'_{l,c}, y_c),
      y = one_hot(labels, C).
    inst: [(tokens [B, L_i, d], pad [B, L_i])]; clin [B, Lc, d], cpad [B, Lc]."""
    C, M = classes, len(inst)
    B, d = clin.shape[0], clin.shape[2]

    cls = P("class_tokens", "cls", "class_token").reshape(C, d)
    ti = P("type_instance", "instance_type").reshape(M, d)
    tc = P("type_clinical", "clinical_type").reshape(d)
    seq = torch.cat([cls.unsqueeze(0).expand(B, C, d)] + [t + ti[i] for i, (t, _) in enumerate(inst)] + [clin + tc], 1)
    ipad = torch.cat([p for _, p in inst], 1)
    pad = torch.cat([torch.zeros(B, C, dtype=torch.bool), ipad, cpad], 1)
    traces = []
    x = seq
    blocks = P.module_list("blocks")
    if len(blocks) != layers:
        raise OracleError("%d blocks in the dump, %d layers configured" % (len(blocks), layers))
    for i, blk in enumerate(blocks):
        x, w = transformer_block(blk, x, pad, heads)
        traces.append(Trace(w, keys=(), role="encoder layer%d" % i))
    x = layer_norm(P.sub("norm"), x)
    q, k, v = lin(P.sub("q"), x), lin(P.sub("k"), x), lin(P.sub("v"), x)

    L = ipad.shape[1]
    cs, ins, cl = slice(0, C), slice(C, C + L), slice(C + L, None)

    def s(keys, queries):  # [B, n, d], [B, m, d] -> σ(k·q/√d) [B, n, m]
        return torch.sigmoid(keys @ queries.transpose(-1, -2) / math.sqrt(d))

    keep_i = (~ipad).to(x.dtype)
    keep_c = (~cpad).to(x.dtype)
    n_c = keep_c.sum(1, keepdim=True)  # [B, 1]
    has_c = n_c > 0
    a = s(k[:, ins], q[:, cs]) * keep_i.unsqueeze(-1)                                  # [B, L, C]
    psi = (s(k[:, ins], q[:, cl]) * keep_c.unsqueeze(1)).sum(-1) / n_c.clamp_min(1)    # [B, L]
    psi = torch.where(has_c, psi, torch.ones_like(psi)) * keep_i
    phi = (s(k[:, cl], q[:, cs]) * keep_c.unsqueeze(-1)).sum(1) / n_c.clamp_min(1)     # [B, C]
    phi = torch.where(has_c, phi, torch.ones_like(phi))
    ap = a * phi.unsqueeze(1) * psi.unsqueeze(-1)                                      # [B, L, C]
    apl = ap.amax(-1)                                                                  # [B, L]
    total = apl.sum(1, keepdim=True)
    z = (apl.unsqueeze(-1) * v[:, ins]).sum(1) / total
    # classifier: Linear d → d, GELU (exact), Linear d → C (fusion.h)
    logits = lin(P.sub("classifier.2"), F.gelu(lin(P.sub("classifier.0"), z)))
    y = F.one_hot(labels, C).to(x.dtype)
    aux = lam * F.binary_cross_entropy(ap.amax(1), y)
    bounds, start = [], 0
    for t, _ in inst:
        bounds.append(slice(start, start + t.shape[1]))
        start += t.shape[1]
    beta = torch.stack([apl[:, b].sum(1) for b in bounds], 1) / total
    traces += [Trace(a, name="fusion/class_attention"), Trace(psi, name="fusion/exploratory"),
               Trace(phi, name="fusion/relevance"), Trace(ap, name="fusion/explanatory")]
    return {"logits": logits, "vector": z, "aux_loss": aux, "beta": beta}, traces


def ref_persam(ctx):
    M = int(ctx.cfg("instance_modalities"))
    inst = [(ctx.inp("instance%d.tokens" % i), ctx.inp("instance%d.pad" % i)) for i in range(M)]
    return persam(Scope(ctx), inst, ctx.inp("clinical.tokens"), ctx.inp("clinical.pad"), ctx.inp("labels"),
                  int(ctx.cfg("heads")), int(ctx.cfg("classes")), int(ctx.cfg("layers")), ctx.cfg("mil_weight"))


MODEL_MODALITIES = ["ehr_static", "ehr_events", "imaging", "genomics"]  # model.h's order


def model_config(ctx):
    """The dumped ModelConfig (config.model: its JSON as bytes)."""
    t = ctx.dump.get("config.model")
    if t is None:
        raise OracleError("missing config.model")
    return json.loads(bytes(t.tolist()).decode())


def model_forward(ctx):
    """The study model of worker/model.h in any configuration. Per modality
    the model has (ModelConfig: static_features, max_events, genes > 0,
    imaging_encoder not "none"), tokens and an encoder:
      static:   feature tokens x_f·w_f + b_f (static_tokens) → sequence
                encoder (static_encoder, class token first);
      events:   the event encoder (events);
      imaging:  patch_features: patch_proj(features) + patch_pos → sequence
                encoder (imaging_encoder); mil: gated attention-MIL (mil) over
                patch_proj(features), tokens [z; projected patches]; vit: ViT
                patch embedding (vit) → imaging_encoder; cnn: the hybrid CNN
                (cnn), its tokens with the class token first;
      genomics: gene tokens (gene_tokens) → gene_encoder;
    the encoders' attention is softmax or efficient (model.attention). A
    patient without a modality has every token of it but the first padded.
    Then the fusion (model.fusion):
      hierarchical: alpha.<i> pools each encoder's tokens, β pools the
                    modality vectors with the absent modalities masked
                    (hierarchical.*);
      cross:        each modality's tokens + token_type[m] (an absent one
                    padded whole), concatenated → one sequence encoder
                    (cross, softmax attention); β_m = the class token's
                    last-layer attention (mean over heads) on modality m's
                    tokens;
      coattention:  the same typed tokens, EHR (static, events) as side a,
                    imaging and genomics as side b → co-attention
                    (coattention); β_m = the attention mass side m's tokens
                    receive from the other side's unpadded queries (mean
                    over heads);
      persam:       events, imaging, genomics as instance modalities, static
                    as the clinical tokens (padded as above) → PersAM
                    (persam, λ = 1 as PersAmOptions' default, labels = the
                    batch's); logit = logits[:, 1] − logits[:, 0], aux_loss
                    its MIL term, β its instance-modality shares.
    cross and coattention normalise β to sum 1 over the modalities. The head
    (all but persam): LayerNorm → Linear → GELU → Dropout → Linear (head.0,
    .1, .4). ASSUMPTIONS (model.h says what β means, not how each fusion
    reads it): the β rules above. Returns the logits [B], β [B, 4] (0 for a
    modality absent or not in the model; not differentiated, as LibTorch
    detaches it) and the auxiliary loss or None."""
    cfg = model_config(ctx)
    P = Scope(ctx)
    heads, layers = cfg["heads"], cfg["layers"]
    linear = cfg["attention"] == "linear"
    present = ctx.inp("present")
    B = present.shape[0]

    def absent(m, L):
        return (~present[:, m]).unsqueeze(1).expand(B, L)

    def encode(S, tok, pad):
        return sequence_encoder(S, tok, pad, heads, layers, linear)[0]

    encoded = {}  # modality index -> {"tokens", "pad"}
    if cfg["static_features"] > 0:
        T = P.sub("static_tokens")
        tok = ctx.inp("static_x").unsqueeze(-1) * T("weight") + T("bias")
        encoded[0] = encode(P.sub("static_encoder"), tok, absent(0, tok.shape[1]))
    if cfg["max_events"] > 0:
        E = P.sub("events")
        tok = F.embedding(ctx.inp("event_bucket"), E("code.weight")) + lin(E.sub("value"), ctx.inp("event_value").unsqueeze(-1))
        tok = tok + time_encoding(E.sub("time"), ctx.inp("event_time"))
        encoded[1] = encode(E.sub("encoder"), tok, ctx.inp("event_pad"))
    imaging = cfg["imaging_encoder"]
    if imaging == "patch_features":
        tok = lin(P.sub("patch_proj"), ctx.inp("imaging")) + P("patch_pos")
        encoded[2] = encode(P.sub("imaging_encoder"), tok, absent(2, tok.shape[1]))
    elif imaging == "mil":
        tok = lin(P.sub("patch_proj"), ctx.inp("imaging"))
        z, _ = gated_mil(P.sub("mil"), tok, None)
        tokens = torch.cat([z.unsqueeze(1), tok], 1)
        encoded[2] = {"tokens": tokens, "pad": absent(2, tokens.shape[1])}
    elif imaging == "vit":
        tok = patch_embedding(P.sub("vit"), ctx.inp("imaging"), cfg["patch_size"])
        encoded[2] = encode(P.sub("imaging_encoder"), tok, absent(2, tok.shape[1]))
    elif imaging == "cnn":
        tokens = hybrid_cnn(P.sub("cnn"), ctx.inp("imaging"), heads, layers)[0]["tokens"]
        encoded[2] = {"tokens": tokens, "pad": absent(2, tokens.shape[1])}
    elif imaging != "none":
        raise OracleError("unknown imaging_encoder %r" % imaging)
    if cfg["genes"] > 0:
        G = P.sub("gene_tokens")
        tok = ctx.inp("genomics").unsqueeze(-1) * G("weight") + G("bias")
        encoded[3] = encode(P.sub("gene_encoder"), tok, absent(3, tok.shape[1]))
    ms = sorted(encoded)

    beta = torch.zeros(B, len(MODEL_MODALITIES))
    aux = None
    fusion = cfg["fusion"]
    if fusion == "hierarchical":
        H = P.sub("hierarchical")
        hs = [attention_pool(H.sub("alpha.%d" % i), encoded[m]["tokens"], encoded[m]["pad"])[0]
              for i, m in enumerate(ms)]
        fused, b = attention_pool(H.sub("beta"), torch.stack(hs, 1), ~present[:, ms])
        beta[:, ms] = b.detach()
    elif fusion in ("cross", "coattention"):
        typed = {m: encoded[m]["tokens"] + P("token_type")[m] for m in ms}
        pads = {m: encoded[m]["pad"] | absent(m, 1) for m in ms}

        def mass(per_token, which):  # per-token mass [B, ΣL] over `which`'s tokens, in order
            start = 0
            for m in which:
                L = typed[m].shape[1]
                beta[:, m] += per_token[:, start:start + L].sum(1).detach()
                start += L

        if fusion == "cross":
            enc, traces = sequence_encoder(P.sub("cross"), torch.cat([typed[m] for m in ms], 1),
                                           torch.cat([pads[m] for m in ms], 1), heads, layers)
            fused = enc["vector"]
            mass(traces[-1].tensor[:, :, 0].mean(1)[:, 1:], ms)
        else:
            side_a = [m for m in ms if m in (0, 1)]
            side_b = [m for m in ms if m not in (0, 1)]
            if not side_a or not side_b:
                raise OracleError("coattention needs an EHR modality and another")
            pad_a = torch.cat([pads[m] for m in side_a], 1)
            pad_b = torch.cat([pads[m] for m in side_b], 1)
            co = coattention(P.sub("coattention"), torch.cat([typed[m] for m in side_a], 1),
                             torch.cat([typed[m] for m in side_b], 1), pad_a, pad_b, heads)
            fused = co["fused"]

            def received(w, query_pad):
                return (w.mean(1) * (~query_pad).to(w.dtype).unsqueeze(-1)).sum(1)

            mass(received(co["weights_ab"], pad_a), side_b)
            mass(received(co["weights_ba"], pad_b), side_a)
        beta = beta / beta.sum(1, keepdim=True).clamp_min(1e-12)
    elif fusion == "persam":
        inst = [m for m in ms if m != 0]
        d = cfg["d_model"]
        if 0 in encoded:
            clin, cpad = encoded[0]["tokens"], encoded[0]["pad"] | absent(0, 1)
        else:
            clin, cpad = torch.zeros(B, 0, d), torch.zeros(B, 0, dtype=torch.bool)
        out, _ = persam(P.sub("persam"), [(encoded[m]["tokens"], encoded[m]["pad"] | absent(m, 1)) for m in inst],
                        clin, cpad, ctx.inp("label").long(), heads, 2, layers, 1.0)
        beta[:, inst] = out["beta"].detach()
        return out["logits"][:, 1] - out["logits"][:, 0], beta, out["aux_loss"]
    else:
        raise OracleError("unknown fusion %r" % fusion)
    h = layer_norm(P.sub("head.0"), fused)
    h = F.gelu(lin(P.sub("head.1"), h))
    return lin(P.sub("head.4"), h).squeeze(-1), beta, aux


def ref_model(ctx):
    ctx.inp("label")  # the batch's labels: only PersAM's MIL term reads them
    logits, beta, aux = model_forward(ctx)
    outs = {"logits": logits, "beta": beta}
    if aux is not None:
        outs["aux_loss"] = aux
    return outs, []


# The benchmarked model configurations (experiments/bench/model_variants.h)
# besides "model": each is the parity case model_<variant>.
MODEL_VARIANTS = ["ehr_static", "ehr_events", "imaging_patches", "imaging_mil", "imaging_vit", "imaging_cnn",
                  "genomics", "genomics_linear", "fusion_cross", "fusion_coattention", "fusion_persam"]

# case -> [(variant, reference)]
CASES = {
    "sdpa": [("", ref_sdpa)],
    "masked_softmax": [("", ref_masked_softmax)],
    "mha_self": [("", ref_mha_self)],
    "mha_cross": [("", ref_mha_cross)],
    "coattention": [("", ref_coattention)],
    "linear_attention": [("shen", ref_linear_attention), ("quadratic", ref_linear_attention)],
    "linear_attention_keymaps": [("shen", ref_linear_attention), ("quadratic", ref_linear_attention)],
    "window_attention": [("", ref_window_attention)],
    "window_attention_shifted": [("", ref_window_attention)],
    "axial_attention": [("", ref_axial_attention)],
    "transformer_block": [("", ref_transformer_block)],
    "transformer_block_linear": [("", ref_transformer_block)],
    "squeeze_excitation": [("", ref_squeeze_excitation)],
    "cbam": [("", ref_cbam)],
    "hybrid_cnn": [("", ref_hybrid_cnn)],
    "time_encoding": [("", ref_time_encoding)],
    "feature_tokenizer": [("", ref_feature_tokenizer)],
    "sequence_encoder": [("", ref_sequence_encoder)],
    "event_encoder": [("", ref_event_encoder)],
    "patch_embedding": [("", ref_patch_embedding)],
    "gated_mil": [("", ref_gated_mil)],
    "attention_pool": [("", ref_attention_pool)],
    "hierarchical_fusion": [("", ref_hierarchical_fusion)],
    "persam": [("", ref_persam)],
    "model": [("", ref_model)],
    **{"model_" + v: [("", ref_model)] for v in MODEL_VARIANTS},
}


# ----------------------------------------------------------------------------
# Comparison.


def max_abs_diff(ref, got):
    """Max abs difference, inf on a shape mismatch or a NaN / inf in either."""
    ref = ref.detach()
    if tuple(ref.shape) != tuple(got.shape):
        return math.inf, "shape %s vs dumped %s" % (tuple(ref.shape), tuple(got.shape))
    if ref.numel() == 0:
        return 0.0, ""
    if ref.dtype == torch.bool or got.dtype == torch.bool or not ref.is_floating_point():
        if ref.dtype != got.dtype:
            return math.inf, "dtype %s vs dumped %s" % (ref.dtype, got.dtype)
        return float((ref != got).sum().item()), "(entries that differ)"
    r, g = ref.double(), got.double()
    if not torch.isfinite(r).all() or not torch.isfinite(g).all():
        return math.inf, "non-finite values (reference %s, dumped %s)" % (
            bool(torch.isfinite(r).all()), bool(torch.isfinite(g).all()))
    return (r - g).abs().max().item(), ""


class Report:
    def __init__(self, prefix):
        self.prefix = prefix
        self.failed = False

    def line(self, label, ref, got, tol=TOL):
        diff, why = max_abs_diff(ref, got)
        ok = diff <= tol
        self.failed |= not ok
        print("%s%11.3e  %-4s %s%s" % (self.prefix, diff, "ok" if ok else "FAIL", label, "  " + why if why else ""))

    def fail(self, msg):
        self.failed = True
        print("%s  FAIL %s" % (self.prefix, msg))


def match_traces(expected, dumped_names, dump, rep):
    """Dumped trace name -> expected Trace. Exact names first; the rest by
    shape, then by keys contained in the name, then in natural name order."""
    out = {}
    left = set(dumped_names)
    loose = []
    for t in expected:
        if t.name is None:
            loose.append(t)
        elif t.name in left:
            out[t.name] = t
            left.discard(t.name)
        else:
            rep.fail("missing trace %r" % t.name)
    shapes = {}
    for t in loose:
        shapes.setdefault(tuple(t.tensor.shape), []).append(t)
    for shape, group in shapes.items():
        names = sorted((n for n in left if tuple(dump["output.trace." + n].shape) == shape), key=natural_key)
        if len(names) != len(group):
            rep.fail("traces of shape %s: expected %s, dumped %s" % (shape, [t.role for t in group], names))
            continue
        pairs = {}
        if all(t.keys for t in group):
            for t in group:
                hits = [n for n in names if all(k in n.lower() for k in t.keys)]
                if len(hits) == 1:
                    pairs[hits[0]] = t
        if len(pairs) != len(group):
            pairs = dict(zip(names, group))
        for n, t in pairs.items():
            print("%s  trace %-18s = output.trace.%s" % (rep.prefix, t.role, n))
            out[n] = t
            left.discard(n)
    for n in sorted(left, key=natural_key):
        rep.fail("dumped trace %r has no reference" % n)
    return out


def run_variant(variant, fn, dump):
    ctx = Ctx(dump, variant)
    rep = Report("[%s] " % variant if variant else "")
    try:
        outs, traces = fn(ctx)
    except OracleError as e:
        rep.fail("structure: %s" % e)
        return False

    # Coverage: every dumped parameter and input consumed.
    for n in sorted(set(ctx.params) - set(ctx.leaves), key=natural_key):
        rep.fail("dumped parameter %r not consumed by the reference" % n)
    for n in sorted(set(ctx.inputs) - set(ctx.in_leaves), key=natural_key):
        rep.fail("dumped input %r not consumed by the reference" % n)
    for n in sorted(set(ctx.buffers) - ctx.buf_used, key=natural_key):
        ctx.note("buffer %r not checked" % n)

    # Outputs: reference name -> tensor, keyed as in the dump.
    dumped = {k[len("output."):] for k in dump if k.startswith("output.")}
    compared = {}
    for name, t in outs.items():
        if name in dumped:
            compared[name] = t
        else:
            rep.fail("output %r missing from the dump" % name)
    trace_names = [n[len("trace."):] for n in dumped if n.startswith("trace.")]
    for n, t in match_traces(traces, trace_names, dump, rep).items():
        compared["trace." + n] = t.tensor
    for n in sorted(dumped - set(compared) - {"trace." + m for m in trace_names}, key=natural_key):
        rep.fail("dumped output %r has no reference" % n)

    for label, ref, got, tol in ctx.extras:
        rep.line(label, ref, got, tol)
    for name in sorted(compared, key=natural_key):
        rep.line("output." + name, compared[name], dump["output." + name])

    # Backward with the dumped cotangents.
    loss = None
    for name, t in compared.items():
        cot = dump.get("cot." + name)
        if cot is None or not t.is_floating_point():
            continue
        if "config.detached." + name in dump:
            ctx.note("output %s does not require grad in LibTorch; left out of the loss as there" % name)
            continue
        if not t.requires_grad:
            continue
        term = (t * cot).sum()
        loss = term if loss is None else loss + term
    if loss is not None:
        loss.backward()
    for key in sorted((k for k in dump if k.startswith("grad.")), key=natural_key):
        if key.startswith("grad.param."):
            n = key[len("grad.param."):]
            leaf = ctx.leaves.get(n)
        else:
            n = key[len("grad.input."):]
            leaf = ctx.in_leaves.get(n)
        if leaf is None:
            continue  # already reported as not consumed
        g = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
        if "config.nograd." + n in dump:
            ctx.note("parameter %s had no grad in LibTorch (zeros dumped)" % n)
        rep.line(key, g, dump[key])

    for msg in ctx.notes:
        print("%s  note: %s" % (rep.prefix, msg))
    return not rep.failed


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dump-bin", required=True)
    ap.add_argument("--case", required=True)
    ap.add_argument("--dir", required=True)
    args = ap.parse_args()  # exits 2 on a usage error
    if args.case not in CASES:
        print("unknown case %r; cases: %s" % (args.case, " ".join(CASES)), file=sys.stderr)
        return 2
    if not os.access(args.dump_bin, os.X_OK):
        print("not an executable: %s" % args.dump_bin, file=sys.stderr)
        return 2
    os.makedirs(args.dir, exist_ok=True)
    path = os.path.join(args.dir, args.case + ".pt")
    proc = subprocess.run([args.dump_bin, args.case, path])
    if proc.returncode != 0:
        print("FAIL %s: %s exited %d" % (args.case, args.dump_bin, proc.returncode))
        return 2 if proc.returncode == 2 else 1
    dump = torch.load(path)

    torch.set_grad_enabled(True)
    ok = True
    for variant, fn in CASES[args.case]:
        ok &= run_variant(variant, fn, dump)
    print("%s %s" % ("PASS" if ok else "FAIL", args.case))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
