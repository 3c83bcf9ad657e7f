"""Concept maps on joint transformers (issue 29), after ConceptAttention: the concepts are a third stream that flows through
every double-stream block with the text stream's weights (``norm1_context``, the added q/k/v projections,
``to_add_out``, ``ff_context``), attending to itself and to the image (one-way: the image never sees it, so the
generation is unchanged). Each concept is encoded alone by the pipeline's T5 (its tokens and ``</s>``); a null
concept (``</s>`` alone) joins them, so that normalising over concepts never forces a pixel to pick a real one.

Two maps per concept, per block and step, on the conditional rows:

* ``hm.concepts`` (cross-attention space): the image's queries against the concept stream's keys,
  ``softmax(q_img · K_conceptsᵀ / √d)`` over every concept-stream key (null included), the concept's own tokens'
  probabilities summed, heads summed: where the image would look at each concept if it could.
* ``hm.concept_outputs`` (output space, ConceptAttention's): the image tokens' attention outputs (``to_out``) dot
  the concept tokens' (``to_add_out``), averaged over the concept's tokens, softmax over the concepts and the null
  concept per pixel.

Both are summed over blocks and steps and upsampled like a word's map (Eq. 6). The concept stream is modulated by
the generation's own conditioning (``temb``: timestep, guidance and the prompt's pooled CLIP embedding).
Supported: ``FluxPipeline`` (and Flux.1 img2img / inpainting / Kontext, whose transformer is Flux.1's),
``ChromaPipeline`` (Flux.1's blocks, the text stream modulated by its own rows of the block's modulation),
``Flux2KleinPipeline`` and ``Flux2Pipeline`` (the double-stream blocks' shared text modulation; each concept encoded
in the pipeline's chat template at its exact length, its own tokens as its rows), ``QwenImagePipeline`` (the same
encoding after its dropped prefix; the text stream's own modulation; text rotary positions for the concept stream's
length),
``ZImagePipeline`` (single-stream main blocks: each concept made a caption as the model makes one, through the
text-only refiner, then each main block with the shared weights and modulation; :meth:`ConceptStream._step_zimage`)
and ``StableDiffusion3Pipeline`` (joint blocks with the text stream's weights; no rotary positions; its last block
updates no text stream, so it has a cross-attention map and no output-space one; each concept is encoded as SD3
encodes a prompt, CLIP's tokens and, where loaded, T5's).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

FAMILIES = ("flux", "flux-edit", "flux-kontext", "chroma", "sd3", "flux2", "flux2-dev", "qwen", "zimage")
FLUX2 = ("flux2", "flux2-dev")


class ConceptStream:
    """Hooks on a Flux transformer's double-stream blocks that carry the concept stream and keep its maps on the
    recorder's current generation (``concept_maps``, ``concept_output_maps``: layer → per step [Bc, C, h, w])."""

    def __init__(self, pipe, rec, concepts: list[str]):
        self.pipe, self.rec, self.concepts = pipe, rec, concepts
        name = rec.family.name
        self.sd3, self.flux2, self.qwen, self.zimage = name == "sd3", name in FLUX2, name == "qwen", name == "zimage"
        if self.zimage:
            encoded = self._encode_chat(pipe, rec.family, concepts)
            self.parts = [states for states, _ in encoded]
            self.states, self.rows_of = self._stacked(encoded, rec.family.unified)
        elif self.flux2 or self.qwen:
            self.states, self.rows_of = self._stacked(self._encode_chat(pipe, rec.family, concepts))
        else:
            self.states, self.rows_of = (self._encode_sd3 if self.sd3 else self._encode)(pipe, concepts)
        self.handles, self.c, self.rope, self.temb = [], None, None, None
        self._z_start = None  # Z-Image: the concept stream after the refiner, and its frequencies (no timestep)

    @staticmethod
    def _encode(pipe, concepts):
        """Flux.1, Chroma: each concept's T5 states (its tokens and ``</s>``), then the null concept's ``</s>``, in one
        sequence."""
        tok = getattr(pipe, "tokenizer_2", None) or pipe.tokenizer  # Chroma's only tokenizer is T5's
        device = getattr(pipe, "_execution_device", None) or pipe.device
        parts, rows, at = [], [], 0
        for c in concepts + [""]:
            n = len(tok(c)["input_ids"])  # its tokens and </s>
            with torch.no_grad():
                states = pipe._get_t5_prompt_embeds(prompt=c, num_images_per_prompt=1, max_sequence_length=n,
                                                    device=device)
            states = (states[0] if isinstance(states, tuple) else states)[0]  # Chroma's returns (states, mask)
            parts.append(states[:n])
            rows.append(list(range(at, at + n - 1)) if n > 1 else [at])  # the null concept: its </s>
            at += n
        return torch.cat(parts), rows

    @staticmethod
    def _encode_chat(pipe, family, concepts):
        """Flux.2, Qwen-Image, Z-Image: each concept as the pipeline encodes a prompt (its chat template, system
        message and all; Qwen-Image drops the template's prefix), at exactly its templated length (so no padding):
        per concept (then the null concept ``""``) its states and its own tokens' rows, found as the prompt's are
        (:func:`daamlib.dit.tokens.stream_tokens`); the null concept's rows are all of its rows."""
        from .tokens import _attr, stream_tokens

        stream = family.streams[0]
        tok = pipe
        for part in stream.tokenizer.split("."):
            tok = getattr(tok, part)
        template = stream.template(pipe, {}) if callable(stream.template) else _attr(pipe, stream.template)
        drop = int((stream.drop(pipe, {}) if callable(stream.drop) else _attr(pipe, stream.drop)) or 0)
        device = getattr(pipe, "_execution_device", None) or pipe.device
        # Z-Image's encode_prompt has no num_images_per_prompt and guides by default
        extra = {"do_classifier_free_guidance": False} if family.name == "zimage" else {"num_images_per_prompt": 1}
        out = []
        for c in concepts + [""]:
            n = len(tok(template.replace("{}", c), add_special_tokens=stream.special_tokens)["input_ids"]) - drop
            with torch.no_grad():
                states = pipe.encode_prompt(prompt=c, device=device, max_sequence_length=n, **extra)[0][0]
            out.append((states, stream_tokens(pipe, stream, c, None, {}).positions if c else list(range(len(states)))))
        return out

    @staticmethod
    def _stacked(parts, multiple: int = 1):
        """The concept stream of per-concept ``(states, own rows)``: the states one after another, each padded to a
        multiple of ``multiple`` (Z-Image's captions are; the padding is filled in :meth:`_zimage_stream`), and
        each concept's map rows offset to its place."""
        rows, at = [], 0
        for states, own in parts:
            rows.append([at + r for r in own])
            at += len(states) + (-len(states)) % multiple
        return torch.cat([s for s, _ in parts]), rows

    @staticmethod
    def _encode_sd3(pipe, concepts):
        """SD3: each concept as the pipeline encodes a prompt (``encode_prompt``: both CLIPs' states, zero-padded to
        T5's width, then T5's), cut to its own tokens: CLIP's ``<start>``, tokens, ``<end>`` and, where T5 is loaded,
        T5's tokens and ``</s>``. The null concept (``""``) keeps all its rows; a concept's map rows are its tokens."""
        device = getattr(pipe, "_execution_device", None) or pipe.device
        clip_len = pipe.tokenizer_max_length
        t5 = getattr(pipe, "text_encoder_3", None) is not None
        parts, rows, at = [], [], 0
        for c in concepts + [""]:
            n_clip = len(pipe.tokenizer(c)["input_ids"])
            n_t5 = len(pipe.tokenizer_3(c)["input_ids"]) if t5 else 0
            with torch.no_grad():
                states = pipe.encode_prompt(prompt=c, prompt_2=c, prompt_3=c, device=device,
                                            do_classifier_free_guidance=False,
                                            max_sequence_length=max(n_t5, 1))[0][0]
            kept = torch.cat([states[:n_clip], states[clip_len:clip_len + n_t5]])
            own = list(range(1, n_clip - 1)) + list(range(n_clip, n_clip + max(0, n_t5 - 1)))
            parts.append(kept)
            rows.append([at + r for r in own] if c else list(range(at, at + len(kept))))
            at += len(kept)
        return torch.cat(parts), rows

    def install(self, transformer) -> None:
        self.handles.append(transformer.register_forward_pre_hook(self._start, with_kwargs=True))
        if self.zimage:  # single-stream main blocks: the block keeps temb, its attention module gives the step
            for i, block in enumerate(transformer.layers):
                self.handles.append(block.register_forward_pre_hook(self._keep_temb, with_kwargs=True))
                self.handles.append(block.attention.register_forward_hook(
                    lambda m, a, k, out, _b=block, _i=i: self._step_zimage(_b, _i, a, k, out), with_kwargs=True))
            return
        for i, block in enumerate(transformer.transformer_blocks):
            self.handles.append(block.register_forward_pre_hook(self._keep_temb, with_kwargs=True))
            self.handles.append(block.attn.register_forward_hook(
                lambda m, a, k, out, _b=block, _i=i: self._step(_b, _i, k, out), with_kwargs=True))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    # -- hooks -------------------------------------------------------------------------------------------
    def _start(self, transformer, args, kwargs):
        rows = self.rec.rows
        if not rows:
            self.c = None
            return
        if self.zimage:  # the refiner sees no timestep: the stream's start is made once per trace
            if self._z_start is None:
                self._z_start = self._zimage_stream(transformer)
            c, self.c_freqs = self._z_start
            self.c = c.expand(len(rows), -1, -1).contiguous()
            self.batch = torch.tensor([b for b, _ in rows])
            self.order = torch.argsort(torch.tensor([j for _, j in rows]))
            return
        if self.qwen:  # Qwen-Image's rotary frequencies: the image's, and text positions for the concept stream
            self.rope = transformer.pos_embed(kwargs["img_shapes"], max_txt_seq_len=self.states.shape[0],
                                              device=self.states.device)
        elif self.flux2:  # Flux.2's text positions: (0, 0, 0, l) per token, as the pipeline makes them
            img_ids = kwargs["img_ids"]
            img_ids = img_ids[0] if img_ids.ndim == 3 else img_ids
            ids = self.pipe._prepare_text_ids(self.states[None])[0].to(img_ids)
            (tc, ts), (ic, is_) = transformer.pos_embed(ids), transformer.pos_embed(img_ids)
            self.rope = (torch.cat([tc, ic]), torch.cat([ts, is_]))
        elif not self.sd3:  # Flux.1's rotary positions: the concepts at 0, as the text is
            img_ids = kwargs["img_ids"]
            img_ids = img_ids[0] if img_ids.ndim == 3 else img_ids
            n = self.states.shape[0]
            ids = torch.cat([torch.zeros(n, img_ids.shape[-1], dtype=img_ids.dtype, device=img_ids.device), img_ids])
            self.rope = transformer.pos_embed(ids)
        if self.qwen:  # its text input: an RMS norm, then a linear layer
            c = transformer.txt_in(transformer.txt_norm(self.states.to(transformer.txt_in.weight)))
        else:
            c = transformer.context_embedder(self.states.to(transformer.context_embedder.weight))
        self.c = c[None].expand(len(rows), -1, -1).contiguous()
        self.batch = torch.tensor([b for b, _ in rows])
        self.order = torch.argsort(torch.tensor([j for _, j in rows]))

    def _zimage_stream(self, transformer):
        """Z-Image's concept stream ``[1, C, D]`` and its rotary frequencies ``[1, C, d/2]``: each concept as the
        model takes a caption (``patchify_and_embed``, ``_prepare_sequence``): padded to a multiple of 32, embedded,
        the padding replaced by the caption pad token, positions ``(1 + l, 0, 0)`` (so its tokens stand where a
        caption's tokens stand relative to the image), then the text-only refiner blocks, one concept at a time."""
        t = transformer
        device = t.cap_pad_token.device
        feats, freqs = [], []
        for states in self.parts:
            n = len(states) + (-len(states)) % self.rec.family.unified
            x, pos, pad, _, _ = t._pad_with_ids(states.to(device), (n, 1, 1), (1, 0, 0), device)
            x, f, mask, _, _ = t._prepare_sequence([t.cap_embedder(x.to(t.cap_pad_token.dtype))], [pos], [pad],
                                                   t.cap_pad_token, None, device)
            for layer in t.context_refiner:
                x = layer(x, mask, f)
            feats.append(x)
            freqs.append(f)
        return torch.cat(feats, 1), torch.cat(freqs, 1)

    def _keep_temb(self, block, args, kwargs):
        if self.zimage:  # (x, attn_mask, freqs_cis, adaln_input, ...): every token's modulation is adaln_input's
            self.temb = args[3] if len(args) > 3 else kwargs.get("adaln_input")
            return
        if self.flux2:  # the text stream's modulation, shared by every double-stream block
            self.temb = kwargs["temb_mod_txt"]
        else:
            self.temb = kwargs.get("temb", args[2] if len(args) > 2 else None)

    def _step(self, block, index: int, kwargs, out) -> None:
        if self.c is None or not self.rec.rows:
            return
        attn = block.attn
        b = self.batch.to(self.c.device)
        norm_img = kwargs["hidden_states"].index_select(0, b)
        img_out = (out[0] if isinstance(out, tuple) else out).index_select(0, b)  # to_out of the image tokens
        temb = self.temb.index_select(0, b) if self.temb.shape[0] > 1 else self.temb
        last = getattr(block, "context_pre_only", False)  # SD3's last block: the text stream is not updated
        if self.qwen:  # the text stream's own modulation of temb, as the block makes it
            mod1, mod2 = block.txt_mod(temb).chunk(2, dim=-1)
            norm_c, gate_msa = block._modulate(block.txt_norm1(self.c), mod1)
        elif self.flux2:
            from diffusers.models.transformers.transformer_flux2 import Flux2Modulation

            (shift, scale, gate_msa), (shift_mlp, scale_mlp, gate_mlp) = Flux2Modulation.split(temb, 2)
            norm_c = (1 + scale) * block.norm1_context(self.c) + shift
        elif last:
            norm_c, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.norm1_context(self.c, temb), None, None, None, None
        else:  # Chroma's blocks take [image, text] modulation rows: the text stream's are the last six
            emb = temb[:, 6:] if self.rec.family.name == "chroma" else temb
            norm_c, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.norm1_context(self.c, emb=emb)
        H = attn.heads
        d = attn.to_q.out_features // H
        q_i, k_i, v_i = (f(norm_img).unflatten(-1, (H, d)) for f in (attn.to_q, attn.to_k, attn.to_v))
        norm = lambda f, x: x if f is None else f(x)  # noqa: E731 (SD3 without qk-norm has none)
        q_i, k_i = norm(attn.norm_q, q_i), norm(attn.norm_k, k_i)
        q_c, k_c, v_c = (f(norm_c).unflatten(-1, (H, d)) for f in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
        q_c, k_c = norm(attn.norm_added_q, q_c), norm(attn.norm_added_k, k_c)
        C = q_c.shape[1]
        if self.qwen:  # complex rotary frequencies, applied to the image and the text parts apart
            from diffusers.models.transformers.transformer_qwenimage import apply_rotary_emb_qwen

            img_freqs, txt_freqs = self.rope
            q_i, k_i = (apply_rotary_emb_qwen(x, img_freqs, use_real=False) for x in (q_i, k_i))
            q_c, k_c = (apply_rotary_emb_qwen(x, txt_freqs, use_real=False) for x in (q_c, k_c))
        q, k, v = torch.cat([q_c, q_i], 1), torch.cat([k_c, k_i], 1), torch.cat([v_c, v_i], 1)
        if self.rope is not None and not (self.sd3 or self.qwen):
            from diffusers.models.embeddings import apply_rotary_emb

            q = apply_rotary_emb(q, self.rope, sequence_dim=1)
            k = apply_rotary_emb(k, self.rope, sequence_dim=1)
        q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # [Bc, H, C + N, d]
        scale = d ** -0.5
        # the concept stream's own update: its queries over [concepts, image] (one-way: the image's are not used)
        o_c = None
        if getattr(attn, "to_add_out", None) is not None:  # (none in SD3's last block)
            o_c = F.scaled_dot_product_attention(q[:, :, :C], k, v, scale=scale).transpose(1, 2).flatten(2)
            o_c = attn.to_add_out(o_c.to(q_c.dtype))
        # cross-attention space: the generated image's queries (not Kontext's reference tokens after them) against
        # the concept keys only, softmax over the concept stream
        h, w = self.rec.current.grid
        p = (q[:, :, C:C + h * w].float() @ k[:, :, :C].float().transpose(-1, -2) * scale).softmax(-1)  # [Bc, H, N, C]
        p = p.sum(1)  # heads summed: [Bc, N, C]
        cross = torch.stack([p[..., r].sum(-1) for r in self.rows_of], 1)  # [Bc, concepts + null, N]
        name = f"transformer_blocks.{index}.attn.processor"  # the word maps' name for this block
        g = self.rec.current
        kept = [(g.concept_maps, cross)]
        if o_c is not None:  # output space: image outputs · concept outputs, softmax over concepts and null per pixel
            dots = torch.einsum("bnd,bcd->bcn", img_out[:, : h * w].float(), o_c.float())
            kept.append((g.concept_output_maps, torch.stack([dots[:, r].mean(1) for r in self.rows_of], 1).softmax(1)))
        for store, m in kept:
            store.setdefault(name, []).append(m[self.order, : len(self.concepts)].reshape(-1, len(self.concepts), h, w)
                                              .to(self.rec.store_device or m.device))
        if last or o_c is None:
            return
        # the residual stream, as the block updates its text stream
        if self.qwen:
            c = self.c + gate_msa * o_c
            modulated, gate = block._modulate(block.txt_norm2(c), mod2)
            self.c = c + gate * block.txt_mlp(modulated)
            return
        if self.flux2:  # (its modulation is [B, 1, D] already)
            c = self.c + gate_msa * o_c
            self.c = c + gate_mlp * block.ff_context(block.norm2_context(c) * (1 + scale_mlp) + shift_mlp)
            return
        c = self.c + gate_msa.unsqueeze(1) * o_c
        n = block.norm2_context(c) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        self.c = c + gate_mlp.unsqueeze(1) * block.ff_context(n)


    def _step_zimage(self, block, index: int, args, kwargs, out) -> None:
        """Z-Image's main blocks are single-stream: image and text share every weight and the modulation. The
        concept stream goes through each as a caption would, attending to the image (its padding included) and to
        itself; the image's part of the block is the generation's own (read from its attention call)."""
        if self.c is None or not self.rec.rows:
            return
        attn, b = block.attention, self.batch.to(self.c.device)
        h, w = self.rec.current.grid
        n_x = h * w + (-(h * w)) % self.rec.family.unified  # the image's tokens and their padding come first
        norm_x = (args[0] if args else kwargs["hidden_states"]).index_select(0, b)[:, :n_x]
        freqs_x = kwargs["freqs_cis"].index_select(0, b)[:, :n_x]
        img_out = out.index_select(0, b)[:, : h * w]
        if block.modulation:
            temb = self.temb.index_select(0, b) if self.temb.shape[0] > 1 else self.temb
            scale_msa, gate_msa, scale_mlp, gate_mlp = block.adaLN_modulation(temb).unsqueeze(1).chunk(4, dim=2)
            gate_msa, gate_mlp, scale_msa, scale_mlp = gate_msa.tanh(), gate_mlp.tanh(), 1 + scale_msa, 1 + scale_mlp
        else:
            scale_msa = gate_msa = scale_mlp = gate_mlp = 1.0
        norm_c = block.attention_norm1(self.c) * scale_msa
        H = attn.heads

        def qkv(x, freqs):
            q, k, v = (f(x).unflatten(-1, (H, -1)) for f in (attn.to_q, attn.to_k, attn.to_v))
            q, k = (x if f is None else f(x) for f, x in ((attn.norm_q, q), (attn.norm_k, k)))
            return _rotate(q, freqs), _rotate(k, freqs), v

        q_x, k_x, v_x = qkv(norm_x, freqs_x)
        q_c, k_c, v_c = qkv(norm_c, self.c_freqs)
        d = q_c.shape[-1]
        # the concept stream's own update: its queries over [image, concepts] (one-way: the image's are not used)
        o_c = F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q_c, torch.cat([k_x, k_c], 1),
                                                                           torch.cat([v_x, v_c], 1))))
        o_c = attn.to_out[0](o_c.transpose(1, 2).flatten(2).to(q_c.dtype))
        # cross-attention space: the image's queries against the concept keys only, softmax over the stream
        p = torch.einsum("bnhd,bchd->bhnc", q_x[:, : h * w].float(), k_c.float()).mul(d ** -0.5).softmax(-1).sum(1)
        cross = torch.stack([p[..., r].sum(-1) for r in self.rows_of], 1)  # [Bc, concepts + null, N]
        dots = torch.einsum("bnd,bcd->bcn", img_out.float(), o_c.float())
        outputs = torch.stack([dots[:, r].mean(1) for r in self.rows_of], 1).softmax(1)
        name = f"layers.{index}.attention.processor"  # the word maps' name for this block
        g = self.rec.current
        for store, m in ((g.concept_maps, cross), (g.concept_output_maps, outputs)):
            store.setdefault(name, []).append(m[self.order, : len(self.concepts)].reshape(-1, len(self.concepts), h, w)
                                              .to(self.rec.store_device or m.device))
        c = self.c + gate_msa * block.attention_norm2(o_c)
        self.c = c + gate_mlp * block.ffn_norm2(block.feed_forward(block.ffn_norm1(c) * scale_mlp))


def _rotate(x, freqs):
    """Z-Image's rotary embedding: channel pairs as complex numbers times ``freqs`` ``[B, L, d/2]``."""
    z = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(z * freqs.unsqueeze(2)).flatten(3).type_as(x)


CROSS = ("pixart", "sana")  # cross-attention transformers: concepts by OVAM's method, as on UNets


def supports(family) -> bool:
    return family is not None and family.name in FAMILIES + CROSS


def concept_families() -> str:
    """The transformer pipelines that map concepts, for messages: ``"FluxPipeline, …"``."""
    from .registry import families

    return ", ".join(p for f in families() if supports(f) for p in f.pipelines)


def encode_cross(pipe, family, concepts: list[str]):
    """PixArt, Sana: each concept encoded alone as the pipeline encodes a prompt (lower-cased, no instruction), cut to
    its tokens and the sink token beside them (T5's ``</s>``, Gemma's ``<bos>``), brought into the transformer's
    text space (its caption projection, and Sana's caption norm) once: :class:`daamlib.concepts.Concept` s whose
    keys each cross-attention layer makes with its own ``to_k``."""
    from ..concepts import Concept

    t = pipe.transformer
    device = getattr(pipe, "_execution_device", None) or pipe.device
    out = []
    for c in concepts:
        text = c.lower().strip()
        n = len(pipe.tokenizer(text)["input_ids"])
        extra = {"complex_human_instruction": None} if family.name == "sana" else {}
        with torch.no_grad():
            states = pipe.encode_prompt(prompt=text, do_classifier_free_guidance=False, device=device,
                                        clean_caption=False, max_sequence_length=n, **extra)[0][0, :n]
            states = t.caption_projection(states.to(t.caption_projection.linear_1.weight))
            if family.name == "sana":
                states = t.caption_norm(states)
        rows = list(range(1, n)) if family.name == "sana" else list(range(0, n - 1))  # the sink: <bos> / </s>
        out.append(Concept(c, states, rows))
    return out
