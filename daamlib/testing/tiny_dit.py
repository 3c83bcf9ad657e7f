"""Tiny diffusion-transformer pipelines built from configs: SD3, Flux.1, PixArt-Σ, Qwen-Image, Flux.2 [klein], Chroma.

Sizes follow diffusers' own fast tests (1–2 blocks, hidden size 16–64; a few hundred thousand random
weights): they prove the plumbing of each family — joint attention with image-first or text-first order,
single-stream blocks, cross-attention with a padding mask, packed latents, classifier-free guidance as
each pipeline does it — not attribution. The T5 tokenizer is a real ``T5TokenizerFast`` on a Unigram
vocabulary trained here (Metaspace pre-tokenizer, ``</s>`` appended), so words split into several pieces;
Qwen-Image's is a byte-level BPE (``Qwen2TokenizerFast``) trained here with the chat tokens, and its
language model a 2-layer ``Qwen2_5_VLForConditionalGeneration``. The real Qwen tokenizer turns the
pipeline's system prefix into exactly the 34 tokens the pipeline drops; this small vocabulary needs more,
so the tiny pipeline drops its own prefix length (``prompt_template_encode_start_idx``), as the real one does.
Flux.2 [klein] uses the same tokenizer with Qwen3's chat template and a 27-layer (width 16) ``Qwen3ForCausalLM``,
so the pipeline's default text layers (9, 18, 27) exist. Flux.2 [dev] (``Flux2Pipeline``) gets a text-only stand-in for
``PixtralProcessor`` (:func:`text_processor`) around a byte-level BPE with Mistral's control tokens (``<s>``, ``[SYSTEM_PROMPT]``, ``[INST]``, ``[IMG]`` …, left
padding) and a chat template in Mistral Small 3.1's format, and a 30-layer (width 16)
``Mistral3ForConditionalGeneration`` with a one-layer Pixtral vision tower, so layers (10, 20, 30) exist.
Sana gets a byte-level BPE that prepends ``<bos>`` (as Gemma's), trained with its complex human instruction, a
one-layer ``Gemma2Model`` and a two-block DC-AE.

>>> pipe = tiny_dit_pipeline("flux")            # doctest: +SKIP
>>> hm = daamlib.generate(pipe, "a cat and a dog", steps=2)   # doctest: +SKIP
"""

from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path

import torch

from .tiny import CORPUS, _text_config, tokenizer_dir

KINDS = ("sd3", "flux", "pixart", "sana", "qwen", "flux2", "flux2-dev", "chroma", "zimage", "flux-edit", "flux-kontext",
         "qwen-edit")
QWEN3_CHAT = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n{% if enable_thinking is defined and not "
              "enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}")  # Qwen3's template, its chat part
CHAT_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
QWEN_TEMPLATE = ("<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, "
                 "spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n"
                 "<|im_start|>assistant\n")  # QwenImagePipeline.prompt_template_encode


@lru_cache(maxsize=None)
def t5_tokenizer_dir(vocab_size: int = 160) -> Path:
    """A cached folder with a T5-style tokenizer (Unigram, ``▁`` word starts, ``</s>`` appended) trained on CORPUS."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import T5TokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"],
                                      unk_token="<unk>", shrinking_factor=0.75)
    tok.train_from_iterator(CORPUS * 3, trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", tok.token_to_id("</s>"))])
    out = Path(tempfile.mkdtemp(prefix="daam-tiny-t5-"))
    tok.save(str(out / "tokenizer.json"))
    fast = T5TokenizerFast(tokenizer_file=str(out / "tokenizer.json"), pad_token="<pad>", eos_token="</s>",
                           unk_token="<unk>", extra_ids=0, model_max_length=512)
    fast.save_pretrained(out)
    return out


MISTRAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[IMG]",
                  "[IMG_BREAK]", "[IMG_END]"]
MISTRAL_CHAT = ("{{ bos_token }}{% for m in messages %}{% set text = m['content'] if m['content'] is string else "
                "m['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('') %}"
                "{% if m['role'] == 'system' %}[SYSTEM_PROMPT]{{ text }}[/SYSTEM_PROMPT]{% elif m['role'] == 'user' %}"
                "[INST]{{ text }}[/INST]{% else %}{{ text }}{{ eos_token }}{% endif %}{% endfor %}")  # Mistral Small 3.1's shape


def _byte_bpe(name: str, vocab_size: int, special_tokens: list[str], extra: str, bos: str | None = None) -> Path:
    """A new folder holding ``tokenizer.json``: a byte-level BPE trained on CORPUS and ``extra`` (a template's text,
    so it takes few tokens), with ``special_tokens`` first; ``bos`` is prepended to every text when given."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 3 + [extra] * 3, trainer)
    tok.post_processor = (processors.ByteLevel(trim_offsets=False) if bos is None else processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tok.token_to_id(bos))]))
    out = Path(tempfile.mkdtemp(prefix=f"daam-tiny-{name}-"))
    tok.save(str(out / "tokenizer.json"))
    return out


@lru_cache(maxsize=None)
def mistral_tokenizer_dir(vocab_size: int = 500) -> Path:
    """A cached folder with a byte-level BPE trained on CORPUS and Flux.2's system message, with Mistral's control
    tokens, ``<s>`` prepended, left padding and :data:`MISTRAL_CHAT`."""
    from diffusers.pipelines.flux2.system_messages import SYSTEM_MESSAGE
    from transformers import PreTrainedTokenizerFast

    out = _byte_bpe("mistral", vocab_size, MISTRAL_TOKENS, SYSTEM_MESSAGE, bos="<s>")
    PreTrainedTokenizerFast(tokenizer_file=str(out / "tokenizer.json"), bos_token="<s>", eos_token="</s>",
                            unk_token="<unk>", pad_token="<pad>", padding_side="left", model_max_length=512,
                            chat_template=MISTRAL_CHAT).save_pretrained(out)
    return out


def text_processor(tokenizer):
    """A processor with a tokenizer only, standing in for Flux.2 [dev]'s ``PixtralProcessor`` (which needs
    torchvision, absent here). Its ``apply_chat_template`` is transformers' own ``ProcessorMixin`` method, so the
    template is rendered and tokenized exactly as the real processor does for text (no ``<s>`` added twice)."""
    from transformers.processing_utils import ProcessorMixin

    class MistralTextProcessor(ProcessorMixin):
        def __init__(self, tokenizer=None, chat_template=None):
            super().__init__(tokenizer, chat_template=chat_template)

        def __call__(self, text=None, images=None, videos=None, **kwargs):
            if images is not None or videos is not None:
                raise ValueError("this stand-in processor takes text only")
            keep = ("padding", "truncation", "max_length", "return_tensors", "add_special_tokens")
            return self.tokenizer(text, **{k: v for k, v in kwargs.items() if k in keep})

    return MistralTextProcessor(tokenizer, chat_template=tokenizer.chat_template)


@lru_cache(maxsize=None)
def gemma_tokenizer_dir(vocab_size: int = 500) -> Path:
    """A cached folder with a byte-level BPE that prepends ``<bos>`` (Gemma's habit), trained on CORPUS and Sana's
    default complex human instruction."""
    import inspect

    from diffusers import SanaPipeline
    from transformers import PreTrainedTokenizerFast

    chi = "\n".join(inspect.signature(SanaPipeline.__call__).parameters["complex_human_instruction"].default)
    out = _byte_bpe("gemma", vocab_size, ["<pad>", "<eos>", "<bos>", "<unk>"], chi, bos="<bos>")
    PreTrainedTokenizerFast(tokenizer_file=str(out / "tokenizer.json"), bos_token="<bos>", eos_token="<eos>",
                            unk_token="<unk>", pad_token="<pad>", model_max_length=2048).save_pretrained(out)
    return out


@lru_cache(maxsize=None)
def lm_tokenizer_dir(vocab_size: int = 400) -> Path:
    """A cached folder with a byte-level BPE tokenizer (as Qwen's), trained on CORPUS and the chat template."""
    from transformers import Qwen2TokenizerFast

    out = _byte_bpe("lm", vocab_size, CHAT_TOKENS, QWEN_TEMPLATE.replace("{}", ""))
    Qwen2TokenizerFast(tokenizer_file=str(out / "tokenizer.json"), eos_token="<|im_end|>", pad_token="<|endoftext|>",
                       unk_token=None, bos_token=None).save_pretrained(out)
    return out


def _t5(vocab_size: int, d_model: int = 32, seed: int = 0):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=vocab_size, d_model=d_model, d_ff=37, d_kv=8, num_heads=4, num_layers=2,
                   relative_attention_num_buckets=8, feed_forward_proj="relu", pad_token_id=0, eos_token_id=1,
                   decoder_start_token_id=0)
    return T5EncoderModel(cfg).eval()


def _flux2_parts(seed: int, guidance_embeds: bool):
    """Flux.2's tiny transformer (one double- and one single-stream block, text width 3 × 16 = 48) and VAE."""
    from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel

    torch.manual_seed(seed)
    transformer = Flux2Transformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                                          attention_head_dim=16, num_attention_heads=2, joint_attention_dim=48,
                                          timestep_guidance_channels=256, axes_dims_rope=[4, 4, 4, 4],
                                          guidance_embeds=guidance_embeds)
    torch.manual_seed(seed)
    vae = AutoencoderKLFlux2(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4, 8),
                             down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                             layers_per_block=1, latent_channels=1, norm_num_groups=1, use_quant_conv=False,
                             use_post_quant_conv=False)
    return transformer, vae


def _flow_vae(latent_channels: int, seed: int = 0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4, 8), layers_per_block=1,
                         down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                         latent_channels=latent_channels, norm_num_groups=1, use_quant_conv=False,
                         use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)


VISION_TOKENS = ["<|vision_start|>", "<|image_pad|>", "<|vision_end|>"]


def vision_processor(tokenizer):
    """Qwen2.5-VL's processor (``Qwen2VLProcessor``) with a tiny image processor (4-px patches merged 2 × 2, at most
    32² px) and no video processor: transformers' check wants a torchvision one for that slot, absent here."""
    from transformers import Qwen2VLImageProcessorPil, Qwen2VLProcessor

    class ImageOnlyQwenProcessor(Qwen2VLProcessor):
        def check_argument_for_proper_class(self, name, argument):
            return None if argument is None else super().check_argument_for_proper_class(name, argument)

    images = Qwen2VLImageProcessorPil(patch_size=4, merge_size=2, temporal_patch_size=2, min_pixels=8 * 8,
                                      max_pixels=32 * 32)
    return ImageOnlyQwenProcessor(image_processor=images, tokenizer=tokenizer)


def _qwen_edit(base, seed: int):
    """``QwenImageEditPipeline`` on tiny Qwen-Image's transformer and VAE, with a Qwen2.5-VL that sees the image:
    the tokenizer gains the vision tokens, the vision tower takes 4-px patches. The real pipeline sizes the
    reference image to about 1024² px whatever the model; :func:`reference_area` shrinks that for tests."""
    from diffusers import QwenImageEditPipeline
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2TokenizerFast

    tok = Qwen2TokenizerFast.from_pretrained(lm_tokenizer_dir())
    tok.add_special_tokens({"additional_special_tokens": VISION_TOKENS})
    start, pad, end = tok.convert_tokens_to_ids(VISION_TOKENS)
    torch.manual_seed(seed)
    text_encoder = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
        text_config=dict(hidden_size=16, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, rope_theta=1e6, vocab_size=len(tok), bos_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id,
                         rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"}),
        vision_config=dict(depth=2, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=16,
                           patch_size=4, spatial_merge_size=2, temporal_patch_size=2, window_size=16,
                           fullatt_block_indexes=[1]),
        hidden_size=16, vocab_size=len(tok), vision_start_token_id=start, image_token_id=pad,
        vision_end_token_id=end)).eval()
    c = base.components
    pipe = QwenImageEditPipeline(scheduler=c["scheduler"], vae=c["vae"], text_encoder=text_encoder, tokenizer=tok,
                                 processor=vision_processor(tok), transformer=c["transformer"])
    prefix = pipe.prompt_template_encode.split(VISION_TOKENS[0])[0]  # the system message, dropped by the pipeline
    pipe.prompt_template_encode_start_idx = len(tok(prefix).input_ids)
    pipe.default_sample_size = 16
    pipe.set_progress_bar_config(disable=True)
    return pipe


class reference_area:
    """``with reference_area(64 * 64):`` QwenImageEditPipeline sizes the reference image (and, by default, the output)
    to this many pixels instead of its 1024² (``calculate_dimensions(1024 * 1024, ratio)``), so tiny tests stay
    tiny. Restored on exit."""

    def __init__(self, area: int):
        self.area = area

    def __enter__(self):
        from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit as module

        self.module, self.original = module, module.calculate_dimensions
        module.calculate_dimensions = lambda target, ratio: self.original(self.area, ratio)
        return self

    def __exit__(self, *exc):
        self.module.calculate_dimensions = self.original


def tiny_dit_pipeline(kind: str = "flux", seed: int = 0, dtype=torch.float32):
    """A tiny ``StableDiffusion3Pipeline`` (``"sd3"``), ``FluxPipeline`` (``"flux"``), ``PixArtSigmaPipeline``
    (``"pixart"``), ``QwenImagePipeline`` (``"qwen"``), ``Flux2KleinPipeline`` (``"flux2"``) or ``ChromaPipeline``
    (``"chroma"``) with random weights;
    64×64 images by default."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer, T5TokenizerFast

    if kind not in KINDS:
        raise ValueError(f"unknown tiny transformer kind {kind!r}; choose one of {KINDS}")
    if kind in ("flux-edit", "flux-kontext"):  # FluxImg2ImgPipeline / FluxKontextPipeline on tiny Flux's parts
        import diffusers

        name = "FluxImg2ImgPipeline" if kind == "flux-edit" else "FluxKontextPipeline"
        pipe = getattr(diffusers, name)(**tiny_dit_pipeline("flux", seed).components)
        pipe.default_sample_size = 32
        pipe.set_progress_bar_config(disable=True)
        return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)
    if kind == "qwen-edit":
        pipe = _qwen_edit(tiny_dit_pipeline("qwen", seed), seed)
        return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)
    t5_tok = T5TokenizerFast.from_pretrained(t5_tokenizer_dir())
    if kind == "sd3":
        from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

        torch.manual_seed(seed)
        transformer = SD3Transformer2DModel(sample_size=32, patch_size=2, in_channels=4, num_layers=2,
                                            attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
                                            joint_attention_dim=32, pooled_projection_dim=64, out_channels=4)
        clip = CLIPTokenizer.from_pretrained(tokenizer_dir("<|endoftext|>", 77))
        encoders = []
        for i in range(2):
            torch.manual_seed(seed + i)
            encoders.append(CLIPTextModelWithProjection(_text_config(len(clip), 77, hidden_act="gelu", projection_dim=32)))
        pipe = StableDiffusion3Pipeline(
            transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=_flow_vae(4, seed),
            text_encoder=encoders[0], tokenizer=clip, text_encoder_2=encoders[1],
            tokenizer_2=CLIPTokenizer.from_pretrained(tokenizer_dir("!", 77)),
            text_encoder_3=_t5(len(t5_tok), 32, seed), tokenizer_3=t5_tok)
    elif kind == "flux":
        from diffusers import FluxPipeline, FluxTransformer2DModel

        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                                             attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                             pooled_projection_dim=32, axes_dims_rope=[4, 4, 8])
        clip = CLIPTokenizer.from_pretrained(tokenizer_dir("<|endoftext|>", 77))
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(_text_config(len(clip), 77, hidden_act="gelu", projection_dim=32))
        pipe = FluxPipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=_flow_vae(1, seed),
                            text_encoder=text_encoder, tokenizer=clip, text_encoder_2=_t5(len(t5_tok), 32, seed),
                            tokenizer_2=t5_tok, image_encoder=None, feature_extractor=None)
        pipe.default_sample_size = 32  # 64×64 by default, as the other tiny pipelines (Flux's own default: 128 → 256 px)
    elif kind == "chroma":
        from diffusers import ChromaPipeline, ChromaTransformer2DModel

        torch.manual_seed(seed)
        transformer = ChromaTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                                               attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                               axes_dims_rope=[4, 4, 8], approximator_num_channels=8,
                                               approximator_hidden_dim=32, approximator_layers=1)
        pipe = ChromaPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=_flow_vae(1, seed),
                              text_encoder=_t5(len(t5_tok), 32, seed), tokenizer=t5_tok, transformer=transformer,
                              image_encoder=None, feature_extractor=None)
        pipe.default_sample_size = 32  # 64×64 by default (the real one: 128 → 1024 px)
    elif kind == "qwen":
        from diffusers import AutoencoderKLQwenImage, QwenImagePipeline, QwenImageTransformer2DModel
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2TokenizerFast

        tok = Qwen2TokenizerFast.from_pretrained(lm_tokenizer_dir())
        n, pad, end = len(tok), tok.pad_token_id, tok.eos_token_id
        torch.manual_seed(seed)
        text_encoder = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
            text_config=dict(hidden_size=16, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
                             num_key_value_heads=2, rope_theta=1e6, vocab_size=n, bos_token_id=pad, eos_token_id=end,
                             rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"}),
            vision_config=dict(depth=2, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=16),
            hidden_size=16, vocab_size=n, bos_token_id=pad, eos_token_id=end, vision_start_token_id=n,
            vision_end_token_id=n + 1, image_token_id=n + 2)).eval()
        torch.manual_seed(seed)
        transformer = QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=2,
                                                  attention_head_dim=16, num_attention_heads=3, joint_attention_dim=16,
                                                  guidance_embeds=False, axes_dims_rope=(8, 4, 4))
        torch.manual_seed(seed)
        vae = AutoencoderKLQwenImage(base_dim=24, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1,
                                     temperal_downsample=[False, True], latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
        pipe = QwenImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
                                 tokenizer=tok, transformer=transformer)
        pipe.prompt_template_encode_start_idx = len(tok(QWEN_TEMPLATE.split("{}")[0]).input_ids)
        pipe.default_sample_size = 16  # 64×64 by default with this VAE factor of 4 (the real one: 128 × 8 = 1024 px)
    elif kind == "zimage":
        from diffusers import ZImagePipeline, ZImageTransformer2DModel
        from transformers import Qwen2TokenizerFast, Qwen3Config, Qwen3Model

        tok = Qwen2TokenizerFast.from_pretrained(lm_tokenizer_dir())
        tok.chat_template = QWEN3_CHAT
        torch.manual_seed(seed)  # the pipeline takes the second-to-last hidden states: 2 layers
        text_encoder = Qwen3Model(Qwen3Config(hidden_size=16, intermediate_size=16, num_hidden_layers=2,
                                              num_attention_heads=2, num_key_value_heads=2, head_dim=8,
                                              vocab_size=len(tok), max_position_embeddings=512)).eval()
        torch.manual_seed(seed)
        transformer = ZImageTransformer2DModel(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=4, dim=32,
                                               n_layers=2, n_refiner_layers=1, n_heads=2, n_kv_heads=2, norm_eps=1e-5,
                                               qk_norm=True, cap_feat_dim=16, rope_theta=256.0, t_scale=1000.0,
                                               axes_dims=[8, 4, 4], axes_lens=[256, 32, 32]).eval()
        with torch.no_grad():  # created with torch.empty (diffusers' own test fixes them the same way)
            transformer.x_pad_token.fill_(1.0)
            transformer.cap_pad_token.fill_(1.0)
        vae = _flow_vae(4, seed)
        pipe = ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
                              tokenizer=tok, transformer=transformer)
        pipe.default_sample_size = 32  # for daamlib's default size: 64×64 (the pipeline itself defaults to 1024)
    elif kind == "sana":
        from diffusers import AutoencoderDC, SanaPipeline, SanaTransformer2DModel
        from transformers import Gemma2Config, Gemma2Model, PreTrainedTokenizerFast

        tok = PreTrainedTokenizerFast.from_pretrained(gemma_tokenizer_dir())
        torch.manual_seed(seed)
        text_encoder = Gemma2Model(Gemma2Config(head_dim=8, hidden_size=16, intermediate_size=32, num_attention_heads=2,
                                                num_hidden_layers=1, num_key_value_heads=2, vocab_size=len(tok),
                                                max_position_embeddings=1024, attn_implementation="eager")).eval()
        torch.manual_seed(seed)
        transformer = SanaTransformer2DModel(patch_size=1, in_channels=4, out_channels=4, num_layers=2,
                                             num_attention_heads=2, attention_head_dim=4, num_cross_attention_heads=2,
                                             cross_attention_head_dim=4, cross_attention_dim=8, caption_channels=16,
                                             sample_size=32).eval()
        torch.manual_seed(seed)
        vae = AutoencoderDC(in_channels=3, latent_channels=4, attention_head_dim=2,
                            encoder_block_types=("ResBlock", "EfficientViTBlock"),
                            decoder_block_types=("ResBlock", "EfficientViTBlock"),
                            encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
                            encoder_qkv_multiscales=((), (5,)), decoder_qkv_multiscales=((), (5,)),
                            encoder_layers_per_block=(1, 1), decoder_layers_per_block=[1, 1],
                            downsample_block_type="conv", upsample_block_type="interpolate",
                            decoder_norm_types="rms_norm", decoder_act_fns="silu", scaling_factor=0.41407)
        pipe = SanaPipeline(tokenizer=tok, text_encoder=text_encoder, vae=vae, transformer=transformer,
                            scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0))
    elif kind == "flux2-dev":
        from diffusers import Flux2Pipeline
        from transformers import (Mistral3Config, Mistral3ForConditionalGeneration, MistralConfig, PixtralVisionConfig,
                                  PreTrainedTokenizerFast)

        processor = text_processor(PreTrainedTokenizerFast.from_pretrained(mistral_tokenizer_dir()))
        torch.manual_seed(seed)  # 30 layers: the pipeline stacks hidden states 10, 20 and 30 (3 × 16 = 48 channels)
        text_encoder = Mistral3ForConditionalGeneration(Mistral3Config(
            text_config=MistralConfig(hidden_size=16, intermediate_size=16, num_hidden_layers=30, num_attention_heads=2,
                                      num_key_value_heads=2, head_dim=8, vocab_size=len(processor.tokenizer),
                                      max_position_embeddings=1024),
            vision_config=PixtralVisionConfig(hidden_size=16, intermediate_size=16, num_hidden_layers=1,
                                              num_attention_heads=2, head_dim=8, patch_size=4, image_size=32),
            spatial_merge_size=1, image_token_index=processor.tokenizer.convert_tokens_to_ids("[IMG]"))).eval()
        transformer, vae = _flux2_parts(seed, guidance_embeds=True)  # [dev] is guidance-distilled
        pipe = Flux2Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
                             tokenizer=processor, transformer=transformer)
        pipe.default_sample_size = 32  # 64×64 by default (the real one: 128 → 1024 px)
    elif kind == "flux2":
        from diffusers import Flux2KleinPipeline
        from transformers import Qwen2TokenizerFast, Qwen3Config, Qwen3ForCausalLM

        tok = Qwen2TokenizerFast.from_pretrained(lm_tokenizer_dir())
        tok.chat_template = QWEN3_CHAT
        torch.manual_seed(seed)  # 27 layers: the pipeline stacks layers 9, 18 and 27 (3 × 16 = 48 channels)
        text_encoder = Qwen3ForCausalLM(Qwen3Config(intermediate_size=16, hidden_size=16, num_hidden_layers=27,
                                                    num_attention_heads=2, num_key_value_heads=2, head_dim=8,
                                                    vocab_size=len(tok), max_position_embeddings=512)).eval()
        transformer, vae = _flux2_parts(seed, guidance_embeds=False)
        pipe = Flux2KleinPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
                                  tokenizer=tok, transformer=transformer)
        pipe.default_sample_size = 32  # 64×64 by default (the real one: 128 → 1024 px)
    else:
        from diffusers import DDIMScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

        torch.manual_seed(seed)
        transformer = PixArtTransformer2DModel(
            sample_size=32, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3, caption_channels=32,
            in_channels=4, cross_attention_dim=24, out_channels=8, attention_bias=True,
            activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
            norm_elementwise_affine=False, norm_eps=1e-6).eval()
        vae = _flow_vae(4, seed)
        vae.register_to_config(shift_factor=None, scaling_factor=0.18215)
        pipe = PixArtSigmaPipeline(transformer=transformer, scheduler=DDIMScheduler(), vae=vae,
                                   text_encoder=_t5(len(t5_tok), 32, seed), tokenizer=t5_tok)
    pipe.set_progress_bar_config(disable=True)
    return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)
