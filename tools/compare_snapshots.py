"""Compare two behaviour snapshots (tools/behaviour_snapshot.sh): A B.

Checkpoints and condensed models member by member (dtype, shape, bytes; the JSON meta
with the run directory and epoch times masked), audit trails byte for byte, metrics and
command outputs with their own directory and wall times masked. The bench's timings are
not compared. Exit status 1 on any difference."""
import json, os, re, sys, zipfile
import numpy as np
A, B = sys.argv[1:3]
bad = 0
def norm(text):
    text = text.replace(os.path.abspath(A), "OUT").replace(os.path.abspath(B), "OUT")
    text = re.sub(r'"seconds": [0-9.e-]+', '"seconds": T', text)
    text = re.sub(r"\b\d+(\.\d+)?s\b", "Ts", text)                 # epoch wall times
    text = re.sub(r"\b\d+(\.\d+)? ?(ms|us|s)\b", "T", text)
    return text
for name in sorted(os.listdir(f"{A}/cli")):
    if name.startswith("bench-quick"):
        continue
    a, b = (norm(open(f"{d}/cli/{name}").read()) for d in (A, B))
    if a != b:
        bad += 1
        print("DIFF cli", name)
def arrays(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
n_files = 0
for root, dirs, files in os.walk(f"{A}/runs"):
    for f in files:
        pa = os.path.join(root, f); pb = pa.replace(A, B, 1)
        n_files += 1
        if not os.path.exists(pb):
            print("MISSING", pb); bad += 1; continue
        if f.endswith(".npz"):
            xa, xb = arrays(pa), arrays(pb)
            def same(k):
                if xa[k].dtype.kind == "U" and xa[k].ndim == 0:
                    return norm(str(xa[k])) == norm(str(xb[k]))
                return xa[k].dtype == xb[k].dtype and xa[k].shape == xb[k].shape and xa[k].tobytes() == xb[k].tobytes()
            if xa.keys() != xb.keys() or not all(same(k) for k in xa):
                print("DIFF npz", pa); bad += 1
        elif f == "audit.jsonl":
            if open(pa, "rb").read() != open(pb, "rb").read():
                print("DIFF bytes", pa); bad += 1
        elif f == "metrics.json":
            if norm(open(pa).read()) != norm(open(pb).read()):
                print("DIFF metrics", pa); bad += 1
        else:
            if norm(open(pa, errors="replace").read()) != norm(open(pb, errors="replace").read()):
                print("DIFF bytes", pa); bad += 1
print(f"{n_files} run files, {len(os.listdir(A + '/cli'))} command outputs compared; {bad} differences")
sys.exit(1 if bad else 0)
