"""Independent oracle for the subgroup audit (audit_oracle_test.cc).

  audit_oracle.py metrics DIR TOL  DIR/raw.json (every patient's label, score,
                                   modality weights, attention, feature values
                                   and groups, pooled over the sites) against
                                   DIR/audit.json (made from summed sums),
                                   to TOL (the secure words' fixed point
                                   rounds each site's real sums to 2^-16)
  audit_oracle.py suppression DIR  DIR/tables.json: random count tables with
                                   the cells the audit suppressed

Metrics are computed from the raw predictions with scikit-learn and NumPy,
not from histograms: the AUC must agree within the binning bound (0.005),
everything else within TOL. Suppression: every cell with 0 < n < k is
hidden, and no hidden count is determined by the published counts and the
sums they take part in (a column's cells add up to the total; an
intersection's row and column add up to the marginal cell) -- checked by
matrix rank with NumPy. Exits 1 naming the first disagreement.
"""
import itertools
import json
import math
import sys

import numpy as np
from sklearn.metrics import roc_auc_score

AUC_BOUND = 0.005
JOIN = " & "


def fail(msg):
    print("MISMATCH: " + msg)
    sys.exit(1)


def close(name, got, want, tol):
    if want is None or (isinstance(want, float) and math.isnan(want)):
        if got is not None:
            fail(f"{name}: audit says {got}, oracle says undefined")
        return 0.0
    if got is None:
        fail(f"{name}: audit says undefined, oracle says {want}")
    if abs(got - want) > tol:
        fail(f"{name}: audit {got} vs oracle {want} (|diff| > {tol})")
    return abs(got - want)


def cells_of(raw, columns):
    """(column, value) -> patient indexes, for each column and pair."""
    out = {}
    for c in columns:
        for i, p in enumerate(raw):
            out.setdefault((c, p[c]), []).append(i)
    for a, b in itertools.combinations(sorted(columns), 2):
        for i, p in enumerate(raw):
            out.setdefault((a + JOIN + b, p[a] + JOIN + p[b]), []).append(i)
    return out


def jsd_terms(p, q):
    m = 0.5 * (p + q)
    t = np.zeros_like(p)
    nz = p > 0
    t[nz] += 0.5 * p[nz] * np.log2(p[nz] / m[nz])
    nz = q > 0
    t[nz] += 0.5 * q[nz] * np.log2(q[nz] / m[nz])
    return np.maximum(t, 0)


def metrics(d, tol):
    TOL = float(tol)
    raw = json.load(open(f"{d}/raw.json"))
    audit = json.load(open(f"{d}/audit.json"))
    y = np.array([p["label"] for p in raw], dtype=float)
    s = np.array([p["p"] for p in raw])
    beta = np.array([p["beta"] for p in raw])
    att = np.array([p["attention"] for p in raw])
    val = np.array([p["value"] for p in raw])
    threshold = audit["operating_threshold"]
    calib_bins = 10
    modalities = audit["modalities"]
    columns = [c["column"] for c in audit["columns"] if not c["intersection"]]
    groups = cells_of(raw, columns)
    worst = {"auc": 0.0, "other": 0.0}
    checked = 0

    def cell_metrics(idx):
        yy, ss = y[idx], s[idx]
        pred = ss >= threshold
        m = {"n": len(idx), "prevalence": yy.mean()}
        m["auc"] = roc_auc_score(yy, ss) if 0 < yy.sum() < len(yy) else None
        m["accuracy"] = (pred == (yy > 0)).mean()
        m["tpr"] = pred[yy > 0].mean() if (yy > 0).any() else None
        m["fpr"] = pred[yy == 0].mean() if (yy == 0).any() else None
        m["selection_rate"] = pred.mean()
        bins = np.minimum((np.maximum(ss, 0) * calib_bins).astype(int), calib_bins - 1)
        ece = sum(abs(ss[bins == b].sum() - yy[bins == b].sum()) for b in range(calib_bins))
        m["ece"] = ece / len(idx)
        a = att[idx]
        m["entropy"] = np.mean([-(r[r > 0] * np.log2(r[r > 0])).sum() for r in a])
        m["attention"] = a.sum(0) / a.sum()
        m["beta"] = beta[idx].mean(0)
        return m

    for col in audit["columns"]:
        name = col["column"]
        published = {c["value"]: c for c in col["cells"] if not c.get("suppressed")}
        all_idx = [i for (c, v), idx in groups.items() if c == name for i in idx]
        aucs = []
        for value, cell in published.items():
            idx = groups.get((name, value))
            if idx is None:
                fail(f"{name}={value}: the audit has a cell no patient is in")
            tag = f"{name}={value}"
            m = cell_metrics(idx)
            if cell["n"] != m["n"]:
                fail(f"{tag}: n {cell['n']} vs {m['n']}")
            worst["auc"] = max(worst["auc"], close(tag + " auc", cell["auc"], m["auc"], AUC_BOUND))
            if m["auc"] is not None:
                aucs.append(m["auc"])
            for k in ("prevalence", "accuracy", "tpr", "fpr", "selection_rate", "ece"):
                worst["other"] = max(worst["other"], close(f"{tag} {k}", cell[k], m[k], TOL))
            close(tag + " entropy", cell["mean_attention_entropy_bits"], m["entropy"], TOL)
            for j, mod in enumerate(modalities):
                close(f"{tag} beta {mod}", cell["mean_beta"][mod], m["beta"][j], TOL)
            for f, share in enumerate(cell["attention"]):
                close(f"{tag} attention {f}", share, m["attention"][f], TOL)
            if "jsd_vs_rest_bits" in cell:
                rest = sorted(set(all_idx) - set(idx))
                if cell["rest_n"] != len(rest):
                    fail(f"{tag}: rest_n {cell['rest_n']} vs {len(rest)}")
                r = att[rest].sum(0) / att[rest].sum()
                close(tag + " jsd", cell["jsd_vs_rest_bits"], jsd_terms(m["attention"], r).sum(), TOL)
            checked += 1
        gap = col["between_cells"]["auc_gap"]
        if len(aucs) >= 2:
            close(name + " auc gap", gap["value"], max(aucs) - min(aucs), 2 * AUC_BOUND)

    # Overall AUC, and the flags by the same rule from the raw values.
    close("overall auc", audit["overall"]["auc"], roc_auc_score(y, s), AUC_BOUND)
    rule = audit["flag_rule"]
    want, borderline = {}, set()
    for col in audit["columns"]:
        name = col["column"]
        all_idx = [i for (c, v), idx in groups.items() if c == name for i in idx]
        for cell in col["cells"]:
            if cell.get("suppressed") or "jsd_vs_rest_bits" not in cell:
                continue
            idx = groups[(name, cell["value"])]
            rest = sorted(set(all_idx) - set(idx))
            p = att[idx].sum(0) / att[idx].sum()
            q = att[rest].sum(0) / att[rest].sum()
            terms = jsd_terms(p, q)
            for f, term in enumerate(terms):
                a, b = val[idx, f], val[rest, f]
                pooled = (len(a) * a.var() + len(b) * b.var()) / (len(a) + len(b))
                dd = abs(a.mean() - b.mean()) / math.sqrt(pooled)
                membership = 0.5 * math.erfc(-dd / 2)
                # The lower end of d's 95 % interval (Hedges & Olkin's SE).
                se = math.sqrt(1 / len(a) + 1 / len(b) + dd * dd / (2 * (len(a) + len(b))))
                lower = 0.5 * math.erfc(-max(0.0, dd - 1.96 * se) / 2)
                key = (name, cell["value"], audit["features"][f])
                near = (abs(term - rule["jsd_contribution_bits_at_least"]) < 10 * TOL
                        or abs(lower - rule["membership_auc_lower_95_at_least"]) < 10 * TOL)
                if near:
                    borderline.add(key)
                elif (term >= rule["jsd_contribution_bits_at_least"]
                        and lower >= rule["membership_auc_lower_95_at_least"]):
                    want[key] = membership
    got = {(f["column"], f["value"], f["feature"]): f["membership_auc"] for f in audit["flags"]}
    if set(got) - borderline != set(want):
        fail(f"flags: audit {sorted(got)} vs oracle {sorted(want)}")
    for key, membership in want.items():
        close(f"{key} membership AUC", got[key], membership, 10 * TOL)
    print(f"oracle: {checked} published cells agree; max |AUC diff| {worst['auc']:.5f} "
          f"(bound {AUC_BOUND}), max other diff {worst['other']:.2e}; {len(got)} flags agree")


def suppression(d):
    tables = json.load(open(f"{d}/tables.json"))

    from scipy.optimize import linprog

    hidden_total, intervals, narrowest = 0, 0, math.inf
    for t_no, t in enumerate(tables):
        total, k = t["total"], t["k"]
        cells = [(c["column"], c["value"]) for c in t["cells"]]
        n = {(c["column"], c["value"]): c["n"] for c in t["cells"]}
        hid = {(c["column"], c["value"]) for c in t["cells"] if c["suppressed"]}
        for c, cnt in n.items():
            if 0 < cnt < k and c not in hid:
                fail(f"table {t_no}: {c} has {cnt} < k = {k} patients and is published")
        # The sums a reader knows: each column's cells add up to the total;
        # an intersection's cells with one side's value add up to that
        # marginal cell.
        index = {c: i for i, c in enumerate(cells)}
        rows, rhs_known = [], []
        marg_cols = sorted({c for c, _ in cells if JOIN not in c})
        for col in marg_cols:
            row = np.zeros(len(cells))
            for c in cells:
                if c[0] == col:
                    row[index[c]] = 1
            rows.append((row, total))
        for col in {c for c, _ in cells if JOIN in c}:
            a, b = col.split(JOIN)
            for side, pos in ((a, 0), (b, 1)):
                for v in {v.split(JOIN)[pos] for c, v in cells if c == col}:
                    row = np.zeros(len(cells))
                    for c in cells:
                        if c[0] == col and c[1].split(JOIN)[pos] == v:
                            row[index[c]] = 1
                    if (side, v) in index:
                        row[index[(side, v)]] = -1
                        rows.append((row, 0))
        # Unknowns: the hidden cells. A hidden cell is determined when its
        # unit vector lies in the row space of the system over the unknowns.
        unknown = [index[c] for c in cells if c in hid]
        hidden_total += len(unknown)
        if not unknown:
            continue
        A = np.array([r[unknown] for r, _ in rows])
        A = A[np.abs(A).sum(1) > 0]
        if len(A) == 0:
            continue
        rank = np.linalg.matrix_rank(A)
        for j, u in enumerate(unknown):
            e = np.zeros(len(unknown))
            e[j] = 1
            if np.linalg.matrix_rank(np.vstack([A, e])) == rank:
                fail(f"table {t_no}: hidden cell {cells[u]} (n = {n[cells[u]]}) follows "
                     f"from the published counts; the table (total {total}, k {k}):\n" +
                     "\n".join(f"  {c} {n[c]}{' hidden' if c in hid else ''}" for c in cells))
        # The protection interval: what the published counts, the sums and
        # non-negativity leave of each hidden small cell, by scipy's LP.
        A_all = np.array([r for r, _ in rows])
        known = [i for i in range(len(cells)) if i not in set(unknown)]
        b = np.array([float(v) for _, v in rows])
        for i in known:
            b -= A_all[:, i] * n[cells[i]]
        A_eq = A_all[:, unknown]
        keep = np.abs(A_eq).sum(1) > 0
        A_eq, b = A_eq[keep], b[keep]
        for j, u in enumerate(unknown):
            if not (0 < n[cells[u]] < k) or total < k:
                continue
            c = np.zeros(len(unknown))
            c[j] = 1
            lo = linprog(c, A_eq=A_eq, b_eq=b, bounds=(0, None), method="highs")
            hi = linprog(-c, A_eq=A_eq, b_eq=b, bounds=(0, None), method="highs")
            if lo.status != 0 or hi.status not in (0, 3):
                fail(f"table {t_no}: LP failed ({lo.message}; {hi.message})")
            width = math.inf if hi.status == 3 else -hi.fun - lo.fun
            intervals += 1
            narrowest = min(narrowest, width - (k - 1))
            if width < k - 1 - 1e-6:
                fail(f"table {t_no}: hidden cell {cells[u]} (n = {n[cells[u]]}) lies in "
                     f"[{lo.fun:g}, {-hi.fun:g}], narrower than [1, {k}]; the table:\n" +
                     "\n".join(f"  {c} {n[c]}{' hidden' if c in hid else ''}" for c in cells))
    print(f"oracle: {len(tables)} tables, {hidden_total} suppressed cells, none recoverable; "
          f"{intervals} small cells' protection intervals at least [1, k] wide "
          f"(narrowest margin {narrowest:g})")


if __name__ == "__main__":
    {"metrics": metrics, "suppression": suppression}[sys.argv[1]](*sys.argv[2:])
