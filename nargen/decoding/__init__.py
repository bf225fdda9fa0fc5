"""Pure decoding algorithms over the protocol in ``nargen.decoding.protocol``.

Every decoder takes plain tensors and returns a ``DecodeResult`` holding the tokens and
the number of sequential decoder passes it used.
"""

from nargen.decoding.beam import beam_search
from nargen.decoding.ctc import CTCModel, ctc_beam, ctc_collapse, ctc_greedy
from nargen.decoding.dag import DAGModel, dag_greedy, dag_lookahead, dag_viterbi
from nargen.decoding.greedy import greedy, sample
from nargen.decoding.insertion import InsertionModel, insertion_decode
from nargen.decoding.mask_predict import (
    ParallelModel, Reranker, autoregressive_reranker, length_beam, mask_predict,
)
from nargen.decoding.protocol import DecodeResult, Seq2SeqModel, SpecialIds, length_caps
from nargen.decoding.unmasking import unmask
from nargen.decoding.speculative import (
    AutoregressiveDrafter, Drafter, HeadsDrafter, HiddenStateDrafter, OnePassDrafter, ParallelDrafter,
    aligned_continuation, speculative,
)

__all__ = [
    "CTCModel", "DAGModel", "DecodeResult", "InsertionModel", "ParallelModel", "Reranker", "Seq2SeqModel", "SpecialIds", "autoregressive_reranker",
    "beam_search", "ctc_beam", "ctc_collapse", "ctc_greedy",
    "dag_greedy", "dag_lookahead", "dag_viterbi", "greedy", "sample", "insertion_decode", "length_beam", "length_caps", "mask_predict", "unmask",
    "AutoregressiveDrafter", "Drafter", "HeadsDrafter", "HiddenStateDrafter", "OnePassDrafter", "ParallelDrafter", "aligned_continuation", "speculative",
]
