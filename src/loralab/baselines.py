"""Non-neural baselines (the lab's step 10): TF-IDF features with logistic regression
and with multinomial naive Bayes, from scikit-learn."""

from __future__ import annotations

import time

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.naive_bayes import MultinomialNB
from sklearn.pipeline import make_pipeline

BASELINES = {
    "tfidf-lr": lambda seed: LogisticRegression(max_iter=1000, random_state=seed),
    "tfidf-nb": lambda seed: MultinomialNB(),
}


def run_baseline(method: str, train, eval_, seed: int = 0) -> dict:
    """Fit one TF-IDF baseline on `train` and score it on `eval_`.

    Returns:
        A dict with `eval_accuracy`, `eval_macro_f1`, `train_seconds` (vectorising and
        fitting) and `trainable_params` (the classifier's coefficients).
    """
    if method not in BASELINES:
        raise ValueError(f"unknown baseline {method!r}; choose from {sorted(BASELINES)}")
    pipeline = make_pipeline(TfidfVectorizer(), BASELINES[method](seed))
    start = time.perf_counter()
    pipeline.fit(train["text"], train["label"])
    seconds = time.perf_counter() - start
    predictions = pipeline.predict(eval_["text"])
    accuracy = float((predictions == np.asarray(eval_["label"])).mean())
    macro_f1 = float(f1_score(eval_["label"], predictions, average="macro", zero_division=0))
    clf = pipeline[-1]
    if isinstance(clf, LogisticRegression):
        params = clf.coef_.size + clf.intercept_.size
    else:  # one log-probability per class and feature, plus the class priors
        params = clf.feature_log_prob_.size + clf.class_log_prior_.size
    return {"eval_accuracy": accuracy, "eval_macro_f1": macro_f1, "train_seconds": seconds,
            "trainable_params": int(params)}
