"""Which eligible option was taken: a multinomial propensity model, overlap diagnostics and AIPW clipping.

Also holds the input checks every learner shares (feature frame, option codes, eligibility matrix), because
this is the lowest layer of `models/`: errors name the table, row, column and rule.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import xgboost as xgb
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from features.vocabulary import repeated
from models.config import PropensityConfig

ArrayLike = np.ndarray | pd.DataFrame | pd.Series | Sequence


def as_feature_frame(X: pd.DataFrame | np.ndarray, *, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """A float64 copy of the features with string column names (x0.. for arrays) and a 0..n-1 index.

    With `columns` (the names seen at fit) the frame must hold exactly those columns; they are reordered.
    NaN is allowed (missing measurement); infinite values and non-numeric columns are errors.
    """
    if isinstance(X, pd.DataFrame):
        names = [str(c) for c in X.columns]
        dup = repeated(names)
        if dup:
            raise ValueError(f"table X: duplicated column names {dup} (rule: unique feature names)")
        bad = [
            f"{c!r} ({dtype})"
            for c, dtype in X.dtypes.items()
            if not (pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype))
        ]
        if bad:
            raise ValueError(
                f"table X: column(s) {', '.join(bad)} are not numeric "
                "(rule: features must be numeric; one-hot encode categoricals first)"
            )
        # one conversion of the whole block (column by column costs ~10 ms a call on the page's 160 columns)
        values = X.to_numpy(dtype="float64", na_value=np.nan) if X.shape[1] else np.empty((len(X), 0))
    else:
        values = np.asarray(X, dtype="float64")
        if values.ndim != 2:
            raise ValueError(f"table X: expected a 2-d array (rows x features), got shape {values.shape}")
        names = [f"x{j}" for j in range(values.shape[1])]
    frame = pd.DataFrame(values, columns=names)
    inf = np.isinf(values)
    if inf.any():
        r, c = np.argwhere(inf)[0]
        raise ValueError(
            f"table X: row {r}, column {names[c]!r} is {values[r, c]} (rule: features must be finite or NaN); "
            f"{int(inf.sum())} infinite value(s) in all"
        )
    if columns is not None:
        expected = list(columns)
        missing = [c for c in expected if c not in frame.columns]
        extra = [c for c in frame.columns if c not in expected]
        if missing or extra:
            raise ValueError(
                f"table X: columns differ from those seen at fit (rule: same features at fit and predict); "
                f"missing {missing}, unexpected {extra}"
            )
        frame = frame[expected]
    return frame


def encode_treatment(treatment: ArrayLike, arms: Sequence[str]) -> np.ndarray:
    """Integer code (position in `arms`) of each row's option; an unknown option is an error naming the row."""
    t = np.asarray(treatment, dtype=object).ravel()
    codes = pd.Index(list(arms)).get_indexer(pd.Series(t, dtype=object).astype(str))
    if (codes < 0).any():
        r = int(np.flatnonzero(codes < 0)[0])
        raise ValueError(
            f"table treatment: row {r}, column option is {t[r]!r} (rule: one of {list(arms)}); "
            f"{int((codes < 0).sum())} row(s) with an unknown option"
        )
    return codes.astype(np.int64)


def as_eligible_matrix(
    eligible: pd.DataFrame | np.ndarray | None, arms: Sequence[str], n_rows: int
) -> np.ndarray:
    """(n, n_arms) boolean eligibility; None means every option is eligible. A DataFrame is read by arm name."""
    if eligible is None:
        return np.ones((n_rows, len(arms)), dtype=bool)
    if isinstance(eligible, pd.DataFrame):
        missing = [a for a in arms if a not in eligible.columns]
        if missing:
            raise ValueError(f"table eligible: missing option column(s) {missing} (rule: one column per arm)")
        frame = eligible[list(arms)]
        if frame.isna().any().any():
            r, c = np.argwhere(frame.isna().to_numpy())[0]
            raise ValueError(f"table eligible: row {r}, column {arms[c]!r} is missing (rule: true/false)")
        values = frame.to_numpy(dtype=bool)
    else:
        values = np.asarray(eligible)
        if values.dtype != bool:
            raise ValueError(f"table eligible: expected a boolean array, got dtype {values.dtype}")
    if values.shape != (n_rows, len(arms)):
        raise ValueError(
            f"table eligible: shape {values.shape}, expected {(n_rows, len(arms))} (rule: rows x arms {list(arms)})"
        )
    empty = ~values.any(axis=1)
    if empty.any():
        r = int(np.flatnonzero(empty)[0])
        raise ValueError(
            f"table eligible: row {r} has no eligible option (rule: at least one option per row)"
        )
    return values


def check_factual_eligible(codes: np.ndarray, eligible: np.ndarray, arms: Sequence[str]) -> None:
    """The option actually taken must be one the row was eligible for (else propensities are undefined)."""
    bad = ~eligible[np.arange(len(codes)), codes]
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"table eligible: row {r}, column {arms[codes[r]]!r} is false but that option was taken "
            f"(rule: the taken option is eligible); {int(bad.sum())} such row(s)"
        )


class PropensityModel:
    """Multinomial P(option taken | features) restricted to each row's eligible options.

    The classifier (regularised logistic or XGBoost softmax) is fitted on the rows as taken; predictions set
    ineligible options to 0 and renormalise the rest, so every row sums to 1 over its eligible options.
    """

    def __init__(self, arms: Sequence[str], config: PropensityConfig | None = None) -> None:
        self.arms = tuple(arms)
        self.config = config or PropensityConfig()

    def fit(
        self,
        X: pd.DataFrame | np.ndarray,
        treatment: ArrayLike,
        *,
        eligible: pd.DataFrame | np.ndarray | None = None,
        sample_weight: np.ndarray | None = None,
    ) -> PropensityModel:
        """Fit on the options actually taken; every arm must have been taken at least once."""
        frame = as_feature_frame(X)
        codes = encode_treatment(treatment, self.arms)
        if len(codes) != len(frame):
            raise ValueError(
                f"table treatment: {len(codes)} rows but X has {len(frame)} (rule: aligned rows)"
            )
        elig = as_eligible_matrix(eligible, self.arms, len(frame))
        check_factual_eligible(codes, elig, self.arms)
        counts = np.bincount(codes, minlength=len(self.arms))
        if (counts == 0).any():
            never = [a for a, c in zip(self.arms, counts, strict=True) if c == 0]
            raise ValueError(
                f"table treatment: option(s) {never} never taken (rule: every arm needs rows to model its propensity)"
            )
        self.columns_ = list(frame.columns)
        cfg = self.config
        if cfg.kind == "logistic":
            self.model_ = Pipeline(
                [
                    (
                        "impute",
                        SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True),
                    ),
                    ("scale", StandardScaler()),
                    ("logit", LogisticRegression(C=cfg.C, max_iter=2000)),
                ]
            )
            self.model_.fit(frame, codes, logit__sample_weight=sample_weight)
        else:
            params = cfg.booster.xgb_params()
            self.model_ = xgb.XGBClassifier(objective="multi:softprob", **params)
            self.model_.fit(frame, codes, sample_weight=sample_weight)
        return self

    def predict_proba(
        self, X: pd.DataFrame | np.ndarray, eligible: pd.DataFrame | np.ndarray | None = None
    ) -> np.ndarray:
        """(n, n_arms) probabilities: 0 for ineligible options, the rest renormalised to sum to 1."""
        frame = as_feature_frame(X, columns=self.columns_)
        elig = as_eligible_matrix(eligible, self.arms, len(frame))
        raw = np.asarray(self.model_.predict_proba(frame), dtype="float64")
        if raw.shape[1] != len(self.arms):  # pragma: no cover - guarded at fit
            raise RuntimeError("propensity model classes do not match the arms")
        masked = np.where(elig, np.maximum(raw, 1e-12), 0.0)
        return masked / masked.sum(axis=1, keepdims=True)


def clip_propensity(propensity: np.ndarray, eligible: np.ndarray, lower: float = 0.02) -> np.ndarray:
    """Floor eligible propensities at `lower` (ineligible stay 0) so AIPW weights 1/e stay bounded.

    Rows are deliberately not renormalised: AIPW only uses the taken option's propensity as a weight.
    """
    p = np.asarray(propensity, dtype="float64")
    return np.where(np.asarray(eligible, dtype=bool), np.clip(p, lower, 1.0), 0.0)


def overlap_report(
    propensity: pd.DataFrame | np.ndarray,
    eligible: pd.DataFrame | np.ndarray,
    treatment: ArrayLike,
    *,
    arms: Sequence[str] | None = None,
    threshold: float = 0.02,
) -> pd.DataFrame:
    """Per option, the propensity distribution among eligible rows and the share under the positivity
    threshold, with a `warning` text where effects for that option rest on weak overlap."""
    if isinstance(propensity, pd.DataFrame):
        arms = list(arms) if arms is not None else [str(c) for c in propensity.columns]
        p = propensity[arms].to_numpy(dtype="float64")
    else:
        if arms is None:
            raise ValueError("overlap_report: pass `arms` (column names) with an array of propensities")
        arms = list(arms)
        p = np.asarray(propensity, dtype="float64")
    elig = as_eligible_matrix(eligible, arms, len(p))
    codes = encode_treatment(treatment, arms)
    if p.shape != elig.shape:
        raise ValueError(f"overlap_report: propensity shape {p.shape} differs from eligibility {elig.shape}")
    masked = np.where(elig, p, np.nan)
    n_elig = elig.sum(axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column (never eligible) gives NaN
        stats = {
            "min": np.nanmin(masked, axis=0),
            "p01": np.nanpercentile(masked, 1, axis=0),
            "median": np.nanmedian(masked, axis=0),
            "max": np.nanmax(masked, axis=0),
        }
    below = np.where(elig, p < threshold, False).sum(axis=0)
    share = np.where(n_elig > 0, below / np.maximum(n_elig, 1), np.nan)
    report = pd.DataFrame(
        {
            "option": arms,
            "n_eligible": n_elig.astype(int),
            "n_taken": np.bincount(codes, minlength=len(arms)).astype(int),
            **stats,
            "share_below_threshold": share,
        }
    )
    warning = np.full(len(arms), "", dtype=object)
    warning[report["share_below_threshold"].to_numpy() > 0] = [
        f"{s:.1%} of eligible rows have propensity < {threshold:g}"
        for s in report["share_below_threshold"][report["share_below_threshold"] > 0]
    ]
    warning[report["n_taken"].to_numpy() == 0] = "never taken: no data supports this option"
    warning[n_elig == 0] = "never eligible"
    report["warning"] = warning
    report.attrs["threshold"] = threshold
    return report.set_index("option")
