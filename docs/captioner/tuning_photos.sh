#!/usr/bin/env bash
# Gathers the real photos (and digital artwork) the captioner's out-of-domain check was tuned on into
# OUT/photos and OUT/art: none is a scikit-image image, the judged test (model_repository/captioner/MODEL_CARD.md).
#   bash docs/captioner/tuning_photos.sh /tmp/captioner_photos   (needs apt access and the project's venv)
#   nui eval captioner ... --photos --photo-dir /tmp/captioner_photos/photos /tmp/captioner_photos/art
# Sources: Debian's ukui-wallpapers and lomiri-wallpapers-16.04 (downloaded, unpacked, not installed),
# scikit-learn's load_sample_images (china, flower), matplotlib's sample data (grace_hopper) and the
# gradio wheel's media assets (cheetah, lion, tower).
set -euo pipefail
out=${1:?usage: tuning_photos.sh OUT_DIR}
python=${PYTHON:-.venv/bin/python}
mkdir -p "$out/deb" "$out/photos" "$out/art"
(cd "$out/deb" && apt-get download ukui-wallpapers lomiri-wallpapers-16.04 && for f in *.deb; do dpkg -x "$f" x; done)
bg="$out/deb/x/usr/share/backgrounds"
for f in Bridge_by_Sander_Klootwijk Dragonfly_by_Bolly Picture_0B_by_freespace Picture_1A_by_freespace \
         Wine_by_Jakkub_Mede aitzgorri_by_Aitzol_Berasategi free_by_Peter_Nerlich friends_by_Aitzol_Berasategi \
         life_by_Aitzol_Berasategi picosdeeuropa_by_Aitzol_Berasategi seeding_by_Clements_Engelhardt \
         sunset_by_Aitzol_Berasategi; do
  cp "$bg/$f.jpg" "$out/photos/"
done
for f in 2004default.jpg analogpattern_by_Peter_Nerlich.jpg calla.png city.png desert.png firstgeneration.jpg \
         fluent-color.png focal-ubuntukylin.png goldfish.png greentock_by_Peter_Nerlich.jpg rhythm.jpg \
         rollpaper.png string.jpg the-mouse.jpg umang_by_Abhishek_Mudgal.jpg; do
  cp "$bg/$f" "$out/art/"
done
"$python" - "$out" <<'PY'
import shutil, sys
from pathlib import Path
import gradio, matplotlib.cbook, sklearn.datasets
out = Path(sys.argv[1])
sk = Path(sklearn.datasets.__file__).parent / "images"
gr = Path(gradio.__file__).parent
for src in [sk / "china.jpg", sk / "flower.jpg", Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)),
            *(gr / "media_assets" / "images" / f for f in ("cheetah.jpg", "cheetah1.jpg", "lion.jpg", "tower.jpg")),
            gr / "test_data" / "cheetah2.jpg"]:
    shutil.copy(src, out / "photos" / src.name)
shutil.copy(gr / "media_assets" / "images" / "groot.jpeg", out / "art" / "groot.jpeg")  # a film still (CGI)
PY
ls "$out/photos" | wc -l; ls "$out/art" | wc -l
