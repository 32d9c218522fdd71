"""Regenerate the bundled example projects' data reproducibly (nothing is downloaded).

    python examples/generate.py

breast-cancer and diabetes come from scikit-learn's bundled datasets; churn is generated with a fixed
seed: mixed numeric, categorical and boolean columns with missing values. subscriptions is raw data for a
pipeline: a customers table and one usage file per month, which its prepare.py joins into features.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent


def _snake(name: str) -> str:
    return name.strip().replace(" ", "_")


def breast_cancer() -> pd.DataFrame:
    from sklearn.datasets import load_breast_cancer

    b = load_breast_cancer(as_frame=True)
    df = b.data.rename(columns=_snake).round(6)
    df["diagnosis"] = np.where(b.target == 0, "malignant", "benign")
    return df


def diabetes() -> pd.DataFrame:
    from sklearn.datasets import load_diabetes

    d = load_diabetes(as_frame=True, scaled=False)
    df = d.data.rename(columns=_snake).round(4)
    df["progression"] = d.target.astype(int)
    return df


def churn(n: int = 3000, seed: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    tenure = rng.integers(1, 72, n)
    plan = rng.choice(["basic", "standard", "premium"], n, p=[0.5, 0.3, 0.2])
    region = rng.choice(["north", "south", "east", "west"], n)
    contract = rng.choice(["monthly", "annual", "two-year"], n, p=[0.55, 0.3, 0.15])
    has_support = rng.random(n) < 0.4
    monthly = np.round(np.select([plan == "basic", plan == "standard"], [25.0, 55.0], 95.0) + rng.normal(0, 8, n), 2)
    age = rng.integers(18, 80, n).astype(float)
    logit = (0.9 - 0.05 * tenure + 0.02 * (monthly - 50) + np.where(contract == "monthly", 1.2, -0.8)
             - 0.7 * has_support + np.where(region == "south", 0.4, 0.0) + rng.normal(0, 0.5, n))
    churned = np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "yes", "no")
    df = pd.DataFrame({"tenure_months": tenure, "monthly_charges": monthly, "plan": plan, "region": region,
                       "contract": contract, "has_support": has_support, "age": age, "churned": churned})
    # missing values: numeric, categorical
    df.loc[rng.random(n) < 0.05, "monthly_charges"] = np.nan
    df.loc[rng.random(n) < 0.08, "age"] = np.nan
    df["plan"] = df["plan"].astype(object)
    df.loc[rng.random(n) < 0.04, "plan"] = None
    return df


def subscriptions(n: int = 1500, months: int = 6, seed: int = 11) -> dict[str, pd.DataFrame]:
    """customers.csv (one row per customer, with the label) and usage/<month>.csv (one row per active customer
    and month): the churn signal lives in usage trends, support calls and the contract, so the features that
    prepare.py derives from joining them are what a model needs."""
    rng = np.random.default_rng(seed)
    ids = np.arange(10001, 10001 + n)
    signup = pd.Timestamp("2022-01-01") + pd.to_timedelta(rng.integers(0, 900, n), unit="D")
    plan = rng.choice(["basic", "standard", "premium"], n, p=[0.5, 0.3, 0.2])
    contract = rng.choice(["monthly", "annual", "two-year"], n, p=[0.55, 0.3, 0.15])
    region = rng.choice(["north", "south", "east", "west"], n)
    age = rng.integers(18, 80, n).astype(float)
    age[rng.random(n) < 0.05] = np.nan
    engagement = rng.normal(0, 1, n)  # hidden: drives both usage and churn
    frustration = rng.gamma(1.5, 1.0, n)
    logit = (-0.4 + np.where(contract == "monthly", 1.1, -0.9) - 0.8 * engagement + 0.45 * frustration
             + np.where(plan == "premium", 0.3, 0.0) + rng.normal(0, 0.4, n))
    churned = np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "yes", "no")
    customers = pd.DataFrame({"customer_id": ids, "signup_date": signup.strftime("%Y-%m-%d"), "plan": plan,
                              "contract": contract, "region": region, "age": age, "churned": churned})
    base_minutes = np.exp(5.5 + 0.4 * engagement)
    fee = np.select([plan == "basic", plan == "standard"], [25.0, 55.0], 95.0)
    usage = {}
    for m in range(months):
        month = (pd.Timestamp("2024-01-01") + pd.DateOffset(months=m)).strftime("%Y-%m")
        active = rng.random(n) < 0.93
        decline = np.where(churned == "yes", 1 - 0.07 * m, 1.0)  # leavers use less, month by month
        minutes = np.round(base_minutes * decline * rng.lognormal(0, 0.25, n), 1)
        usage[month] = pd.DataFrame({
            "customer_id": ids, "month": month, "minutes": minutes,
            "data_gb": np.round(np.maximum(0, rng.normal(4 + 2 * engagement, 1.5, n)), 2),
            "support_calls": rng.poisson(0.3 * frustration),
            "charge": np.round(fee + rng.normal(0, 3, n), 2),
        })[active].reset_index(drop=True)
    return {"customers": customers, **{f"usage/{k}": v for k, v in usage.items()}}


def main() -> None:
    for name, make in (("breast-cancer", breast_cancer), ("diabetes", diabetes), ("churn", churn)):
        out = HERE / name / "data" / "train.csv"
        out.parent.mkdir(parents=True, exist_ok=True)
        make().to_csv(out, index=False)
        print(f"wrote {out.relative_to(HERE)}")
    for part, frame in subscriptions().items():
        out = HERE / "subscriptions" / "data" / "raw" / f"{part}.csv"
        out.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(out, index=False)
        print(f"wrote {out.relative_to(HERE)}")


if __name__ == "__main__":
    main()
