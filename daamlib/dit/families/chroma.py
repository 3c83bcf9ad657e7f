"""Chroma (``ChromaPipeline``): Flux.1's blocks with T5's padding masked (all but the first pad) and a separate
negative call for guidance."""

from ..registry import Family, Stream

FAMILY = Family("chroma", ("ChromaPipeline",), ("Chroma",), text_first=True, packed=True, cfg="separate call",
                streams=(Stream("t5", "tokenizer"),),
                attention='as Flux.1, with the T5 padding masked (all but the first pad, as the pipeline masks it)',
                text='`t5`',
                guidance='a separate negative call')
