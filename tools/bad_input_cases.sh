#!/bin/bash
# Issue 15's bad-input cases, each as a user would type it: the command, its exit code and its last line.
# Usage: tools/bad_input_cases.sh "$PWD"   (runs in a temporary folder on small synthetic datasets; tracking off)
REPO=$1; W=$(mktemp -d); cd $W
cp $REPO/params.yaml .; cp -r $REPO/profiles .
PY="python -m derma_nb.cli"
export PYTHONPATH=$REPO DERMA_NB_TRACKING=off
python - <<'PY'
from pathlib import Path
from derma_nb.sample import make_synthetic_sample
from derma_nb.config import CLASSES
make_synthetic_sample(Path("small"), lesions={c: (2 if c in ("df", "vasc") else 3) for c in CLASSES}, width=64, height=48)
make_synthetic_sample(Path("ok"), lesions={c: 3 for c in CLASSES}, width=64, height=48)
PY
case_() { name=$1; shift; out=$("$@" 2>&1); rc=$?; echo "$name | $* | $rc | $(echo "$out" | grep -v '^\s*$' | tail -1 | cut -c1-220)"; }
case_ "small dataset" $PY prepare --data small -S prepare.image_size=32 -S prepare.out=p_small
cat > p.yaml <<Y
$(cat params.yaml)
Y
sed -i 's/^\(    lr: \).*/\11e-5/' p.yaml
case_ "lr 1e-5 in file" $PY prepare --params p.yaml --data ok -S prepare.image_size=32 -S prepare.out=p_lr
case_ "lr 1e-5 in -S" $PY prepare --data ok -S train.phase2.lr=1e-5 -S prepare.image_size=32 -S prepare.out=p_lr2
mkdir -p linked && ln -s $W/ok/images linked/images && cp ok/*.csv linked/ 2>/dev/null
case_ "symlinked images/" $PY prepare --data linked -S prepare.image_size=32 -S prepare.out=p_link
ln -s $W/ok linkroot
case_ "symlinked root" $PY prepare --data linkroot -S prepare.image_size=32 -S prepare.out=p_linkroot
cp -r ok stray && cp ok/images/$(ls ok/images | head -1) stray/images/EXTRA_0001.jpg
case_ "stray image" $PY prepare --data stray -S prepare.image_size=32 -S prepare.out=p_stray
cp -r ok latin && python - <<'PY'
from pathlib import Path
p = next(Path("latin").glob("*.csv")); t = p.read_text(encoding="utf-8").splitlines()
c = t[3].split(","); c[-1] = "épaule"; t[3] = ",".join(c); p.write_bytes(("\n".join(t) + "\n").encode("latin-1"))
PY
case_ "latin-1 metadata" $PY prepare --data latin -S prepare.image_size=32 -S prepare.out=p_latin
echo "not a model" > some.txt
case_ "predict missing model" $PY predict ok/images --model missing.pt
case_ "predict txt model" $PY predict ok/images --model some.txt
case_ "predict no model" $PY predict ok/images
case_ "bad path" $PY prepare --data no/such
cp -r ok broken && printf 'garbage' > broken/images/$(ls ok/images | head -1)
case_ "corrupt image" $PY prepare --data broken -S prepare.image_size=32 -S prepare.out=p_broken
case_ "latin-1 lenient" $PY prepare --data latin -S data.lenient=true -S prepare.image_size=32 -S prepare.out=p_latin2
echo "leftover tmp files: $(find $W -name '*.tmp' | wc -l)"
