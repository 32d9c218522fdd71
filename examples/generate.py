"""Regenerate the bundled example projects' data reproducibly (nothing is downloaded).

    python examples/generate.py

breast-cancer and diabetes come from scikit-learn's bundled datasets; churn is generated with a fixed
seed: mixed numeric, categorical and boolean columns with missing values.
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


def main() -> None:
    for name, make in (("breast-cancer", breast_cancer), ("diabetes", diabetes), ("churn", churn)):
        out = HERE / name / "data" / "train.csv"
        out.parent.mkdir(parents=True, exist_ok=True)
        make().to_csv(out, index=False)
        print(f"wrote {out.relative_to(HERE)}")


if __name__ == "__main__":
    main()
