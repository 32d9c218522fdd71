"""Join the customers table with their monthly usage files and derive one row of features per customer.

    python prepare.py [RAW_DIR] [OUT_CSV]        (defaults: data/raw, data/train.csv)

Run by `mlopsctl pipeline run` as the `prepare` step. Its one parameter comes from .mlops.toml through the
environment: MLOPS_PARAM_MIN_MONTHS (customers seen in fewer usage months are left out).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd


def main(raw: Path, out: Path) -> None:
    min_months = int(os.environ.get("MLOPS_PARAM_MIN_MONTHS", "1"))
    customers = pd.read_csv(raw / "customers.csv")
    files = sorted((raw / "usage").glob("*.csv"))
    if not files:
        sys.exit(f"no usage files in {raw / 'usage'}")
    usage = pd.concat([pd.read_csv(f) for f in files], ignore_index=True)
    months = sorted(usage["month"].unique())
    last = usage[usage["month"] == months[-1]].set_index("customer_id")["minutes"]
    first = usage[usage["month"] == months[0]].set_index("customer_id")["minutes"]
    per = usage.groupby("customer_id").agg(
        months_active=("month", "nunique"), avg_minutes=("minutes", "mean"), avg_data_gb=("data_gb", "mean"),
        support_calls=("support_calls", "sum"), avg_charge=("charge", "mean"))
    per["minutes_trend"] = (last / first).reindex(per.index)  # NaN when absent in the first or last month
    per = per[per["months_active"] >= min_months]
    df = customers.merge(per, left_on="customer_id", right_index=True, how="inner")
    end = pd.Timestamp(months[-1]) + pd.offsets.MonthEnd(0)
    df["tenure_days"] = (end - pd.to_datetime(df["signup_date"])).dt.days
    df["calls_per_month"] = df["support_calls"] / df["months_active"]
    df = df.drop(columns=["customer_id", "signup_date"])
    out.parent.mkdir(parents=True, exist_ok=True)
    df.round(4).to_csv(out, index=False)
    print(f"{len(df)} customers x {df.shape[1] - 1} features from {len(files)} usage files -> {out}")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(Path(args[0]) if args else Path("data/raw"), Path(args[1]) if len(args) > 1 else Path("data/train.csv"))
