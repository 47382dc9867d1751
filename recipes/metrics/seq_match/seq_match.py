"""Sequence match for generated text: exact match and corpus BLEU-4 over whitespace tokens.

BLEU here is Papineni et al.'s corpus-level form (clipped n-gram precisions for n = 1..4, geometric mean, brevity
penalty) on whitespace tokens, with one reference per prediction and no smoothing. It is comparable across runs of
these recipes, not with sacreBLEU scores (different tokenization).
"""
import collections
import math

import datasets
import evaluate


def _ngrams(tokens, n):
    return collections.Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


class SeqMatch(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Exact match (fraction of predictions identical to their reference after stripping) and "
                        "corpus BLEU-4 (0-100) over whitespace tokens.",
            citation="",
            inputs_description="predictions, references: lists of strings",
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, max_order=4):
        exact = sum(p.strip() == r.strip() for p, r in zip(predictions, references))
        matches, totals = [0] * max_order, [0] * max_order
        pred_len = ref_len = 0
        for p, r in zip(predictions, references):
            pt, rt = p.split(), r.split()
            pred_len, ref_len = pred_len + len(pt), ref_len + len(rt)
            for n in range(1, max_order + 1):
                pn, rn = _ngrams(pt, n), _ngrams(rt, n)
                matches[n - 1] += sum(min(c, rn[g]) for g, c in pn.items())
                totals[n - 1] += max(len(pt) - n + 1, 0)
        if min(matches) == 0 or pred_len == 0:
            bleu = 0.0
        else:
            log_p = sum(math.log(m / t) for m, t in zip(matches, totals)) / max_order
            bp = 1.0 if pred_len > ref_len else math.exp(1 - ref_len / pred_len)
            bleu = 100.0 * bp * math.exp(log_p)
        return {"exact_match": exact / max(len(predictions), 1), "bleu": bleu}
