"""The report's references: the data set, and the source of every method a run's results used.

:data:`REFERENCES` holds each entry as the References section prints it (the one place years
and page numbers are typed); :func:`methods_used` reads a run's results and returns the keys of
the methods they used, so the report cites what this run did and nothing else. The study
itself is the course project this kit reproduces (:mod:`fmnist_utils.study`); it has no
published reference, so the report names it in words and cites the data set.
"""

from __future__ import annotations

import re

from . import records

REFERENCES: dict[str, str] = {
    "fashion_mnist": "Xiao, H., Rasul, K. & Vollgraf, R. (2017). Fashion-MNIST: a novel image dataset for "
                     "benchmarking machine learning algorithms. arXiv:1708.07747.",
    "optuna": "Akiba, T., Sano, S., Yanase, T., Ohta, T. & Koyama, M. (2019). Optuna: a next-generation "
              "hyperparameter optimization framework. Proceedings of KDD 2019, 2623-2631.",
    "tpe": "Bergstra, J., Bardenet, R., Bengio, Y. & Kégl, B. (2011). Algorithms for hyper-parameter "
           "optimization. Advances in Neural Information Processing Systems 24, 2546-2554.",
    "nadeau_bengio": "Nadeau, C. & Bengio, Y. (2003). Inference for the generalization error. Machine Learning "
                     "52(3), 239-281.",
    "mcnemar": "McNemar, Q. (1947). Note on the sampling error of the difference between correlated "
               "proportions or percentages. Psychometrika 12(2), 153-157.",
    "bonett_price": "Bonett, D. G. & Price, R. M. (2012). Adjusted Wald confidence interval for a difference of "
                    "binomial proportions based on paired data. Journal of Educational and Behavioral "
                    "Statistics 37(4), 479-488.",
    "clopper_pearson": "Clopper, C. J. & Pearson, E. S. (1934). The use of confidence or fiducial limits "
                       "illustrated in the case of the binomial. Biometrika 26(4), 404-413.",
    "mantel": "Mantel, N. (1967). The detection of disease clustering and a generalized regression approach. "
              "Cancer Research 27(2), 209-220.",
    "bootstrap": "Efron, B. (1979). Bootstrap methods: another look at the jackknife. The Annals of "
                 "Statistics 7(1), 1-26.",
    "cka": "Kornblith, S., Norouzi, M., Lee, H. & Hinton, G. (2019). Similarity of neural network "
           "representations revisited. Proceedings of ICML 2019, PMLR 97, 3519-3529.",
    "unbiased_hsic": "Song, L., Smola, A., Gretton, A., Bedo, J. & Borgwardt, K. (2012). Feature selection via "
                     "dependence maximization. Journal of Machine Learning Research 13, 1393-1434.",
    "resnet": "He, K., Zhang, X., Ren, S. & Sun, J. (2016). Deep residual learning for image recognition. "
              "Proceedings of CVPR 2016, 770-778.",
    "imagenet": "Deng, J., Dong, W., Socher, R., Li, L.-J., Li, K. & Fei-Fei, L. (2009). ImageNet: a "
                "large-scale hierarchical image database. Proceedings of CVPR 2009, 248-255.",
    "nesterov": "Sutskever, I., Martens, J., Dahl, G. & Hinton, G. (2013). On the importance of initialization "
                "and momentum in deep learning. Proceedings of ICML 2013, PMLR 28(3), 1139-1147.",
    "onecycle": "Smith, L. N. & Topin, N. (2019). Super-convergence: very fast training of neural networks "
                "using large learning rates. Proceedings of SPIE 11006, 1100612.",
    "label_smoothing": "Szegedy, C., Vanhoucke, V., Ioffe, S., Shlens, J. & Wojna, Z. (2016). Rethinking the "
                       "Inception architecture for computer vision. Proceedings of CVPR 2016, 2818-2826.",
    "random_erasing": "Zhong, Z., Zheng, L., Kang, G., Li, S. & Yang, Y. (2020). Random erasing data "
                      "augmentation. Proceedings of AAAI 2020, 13001-13008.",
    "adam": "Kingma, D. P. & Ba, J. (2015). Adam: a method for stochastic optimization. ICLR 2015, "
            "arXiv:1412.6980.",
    "rmsprop": "Tieleman, T. & Hinton, G. (2012). Lecture 6.5, rmsprop: divide the gradient by a running "
               "average of its recent magnitude. Coursera: Neural Networks for Machine Learning.",
}

# What in a verdict record's test or statistic names which method (case-insensitive).
TEST_PATTERNS: dict[str, str] = {
    "nadeau_bengio": r"corrected resampled|nadeau",
    "mcnemar": r"mcnemar",
    "bonett_price": r"bonett",
    "clopper_pearson": r"clopper",
    "mantel": r"mantel",
    "bootstrap": r"bootstrap",
    "cka": r"\bcka\b",
}

# A trained configuration's setting -> the reference of the method it switches on (TrainConfig
# fields, as results.json records them; a setting at the study's default cites nothing).
SETTING_REFERENCES: dict[str, tuple[str, object]] = {
    "nesterov": ("nesterov", lambda v: v is True),
    "onecycle": ("schedule", lambda v: v == "onecycle"),
    "label_smoothing": ("label_smoothing", lambda v: isinstance(v, (int, float)) and v > 0),
    "random_erasing": ("aug_erase", lambda v: isinstance(v, (int, float)) and v > 0),
    "adam": ("optimizer", lambda v: v == "adam"),
    "rmsprop": ("optimizer", lambda v: v == "rmsprop"),
    "resnet": ("model", lambda v: isinstance(v, str) and v.startswith("resnet")),
}


def record_methods(record: dict) -> list[str]:
    """Return the :data:`REFERENCES` keys of the methods one verdict record names in its test or
    statistic (:data:`TEST_PATTERNS`), in that table's order: what to cite beside its numbers."""
    text = " ".join(str(record.get(field) or "") for field in ("test", "statistic"))
    return [key for key, pattern in TEST_PATTERNS.items() if re.search(pattern, text, re.IGNORECASE)]


def _texts(results: records.Record) -> list[str]:
    return [str(r.get(field) or "") for r in records.verdicts(results).values() if isinstance(r, dict)
            for field in ("test", "statistic", "claim")]


def _trained_configs(results: dict[str, records.Record]) -> list[dict]:
    # 02_train's configuration and the study's recipe beside it; every row 04_improvements trained.
    configs = []
    train, improve = results.get("02_train"), results.get("04_improvements")
    if train is not None:
        configs += [train.config, (train.study_recipe or {}).get("config")]
    if improve is not None:
        configs += [row.get("settings") for row in improve.rows or []]
    return [c for c in configs if isinstance(c, dict)]


def methods_used(results: dict[str, records.Record]) -> set[str]:
    """Return the :data:`REFERENCES` keys of the methods a run used, from its results records
    (:class:`fmnist_utils.records.Record`) by notebook stem.

    Tests and statistics are read from the verdict records (:data:`TEST_PATTERNS` against their
    ``test``, ``statistic`` and ``claim``); the search from 01_sweep's protocol (Optuna; TPE when
    its space is ``"tpe"``); the networks from 03_resnet_compare (ResNet, and ImageNet when its
    weights were pretrained); the training methods from the settings of every configuration
    02_train and 04_improvements trained (:data:`SETTING_REFERENCES`). Fashion-MNIST is always used.
    """
    used = {"fashion_mnist"}
    text = " ".join(t for r in results.values() for t in _texts(r))
    used |= {key for key, pattern in TEST_PATTERNS.items() if re.search(pattern, text, re.IGNORECASE)}
    if "cka" in used:
        used.add("unbiased_hsic")  # the kit's CKA uses the unbiased HSIC estimator (correlation.linear_cka)
    sweep = results.get("01_sweep")
    if sweep is not None:
        used.add("optuna")
        space = (sweep.protocol or {}).get("space") or {}
        if isinstance(space, dict) and space.get("kind") == "tpe":
            used.add("tpe")
    compare = results.get("03_resnet_compare")
    if compare is not None:
        used.add("resnet")
        if compare.pretrained:
            used.add("imagenet")
    for config in _trained_configs(results):
        used |= {key for key, (field, on) in SETTING_REFERENCES.items() if on(config.get(field))}
    return used
