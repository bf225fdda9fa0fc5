"""The Python API: ``from nargen import Translator`` in three lines, for any family."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.slow


def test_translator_in_three_lines(trained_run):
    from nargen import Translator

    translator = Translator.from_checkpoint(trained_run / "checkpoints" / "best.ckpt", device="cpu")
    (line,) = translator.translate(["ka lo mi"], beam=3)
    assert line.text == "mi lo ka" and line.score is not None and line.passes > 0
    assert len(line.nbest) == 3 and line.nbest[0]["text"] == line.text
    src = translator.encode_batch(["ka lo mi", "za"])
    assert src.shape[0] == 2 and int(src[1, 1]) == translator.module.ids.eos


def test_translator_gives_the_refinement_history_and_the_cli_output(trained_cmlm):
    from nargen import Translator
    from nargen.decoding import mask_predict

    translator = Translator.from_checkpoint(trained_cmlm)
    lines = translator.translate(["ka lo mi", "nu pe ro su ti"], iterations=4, keep_history=True)
    assert all(len(line.history) == 4 and line.history[-1] == line.text for line in lines)
    # research code calling the decoder directly, with the checkpoint's own settings
    module = translator.module
    direct = mask_predict(module, translator.encode_batch(["ka lo mi"]), iterations=4,
                          **module.mask_predict_settings())
    assert module.tokenizer.decode(direct.as_lists(module.ids.pad))[0] == lines[0].text
    assert torch.is_tensor(direct.tokens)
