"""Non-neural baselines (the lab's step 10): TF-IDF features with logistic regression
and with multinomial naive Bayes, from scikit-learn; for a regression task, with ridge
regression."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.naive_bayes import MultinomialNB
from sklearn.pipeline import make_pipeline

from .metrics import Metrics, Scored, classification_metrics, regression_metrics

ESTIMATORS = {
    "tfidf-lr": lambda seed: LogisticRegression(max_iter=1000, random_state=seed),
    "tfidf-nb": lambda seed: MultinomialNB(),
    "tfidf-ridge": lambda seed: Ridge(alpha=1.0, random_state=seed),
}


@dataclass
class BaselineResult(Scored):
    """A TF-IDF baseline fitted and scored."""

    metrics: Metrics        # on the eval split
    train_seconds: float    # vectorising and fitting
    trainable_params: int   # the classifier's coefficients


PAIR_MARKER = " [SEP] "


def baseline_texts(split) -> list[str]:
    """What TF-IDF reads: the text, or a pair's two texts joined with " [SEP] " (one bag of
    words for both; GLUE_PROVENANCE.md's TF-IDF figures are made the same way)."""
    if "text_pair" in split.column_names:
        return [f"{a}{PAIR_MARKER}{b}" for a, b in zip(split["text"], split["text_pair"])]
    return list(split["text"])


def run_baseline(method: str, train, eval_, seed: int = 0) -> BaselineResult:
    """Fit one TF-IDF baseline on `train` and score it on `eval_` (ridge regression's
    predicted scores by their correlations, the classifiers' classes by accuracy, ...)."""
    if method not in ESTIMATORS:
        raise ValueError(f"unknown baseline {method!r}; choose from {sorted(ESTIMATORS)}")
    pipeline = make_pipeline(TfidfVectorizer(), ESTIMATORS[method](seed))
    start = time.perf_counter()
    pipeline.fit(baseline_texts(train), train["label"])
    seconds = time.perf_counter() - start
    predicted = pipeline.predict(baseline_texts(eval_))
    clf = pipeline[-1]
    metrics = (regression_metrics(predicted, eval_["label"]) if isinstance(clf, Ridge)
               else classification_metrics(predicted, eval_["label"]))
    if isinstance(clf, (LogisticRegression, Ridge)):
        params = clf.coef_.size + np.size(clf.intercept_)
    else:  # one log-probability per class and feature, plus the class priors
        params = clf.feature_log_prob_.size + clf.class_log_prior_.size
    return BaselineResult(metrics, seconds, int(params))
