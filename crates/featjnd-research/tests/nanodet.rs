//! NanoDet (COCO) hand port: the strict TF.js weight loader, head + tail = forward at every split,
//! the port against an independent TensorFlow.js run of the same graph on real photos
//! (`tools/nanodet_ref.mjs`, max abs diff ≤ 1e-3 on every raw output and split feature), and the
//! decoding on labelme's three VOC 2011 photos against their real boxes.
//!
//! Tests that need `.deps/data/nanodet`, `.deps/data/photos` (scripts/fetch-real.sh), `node` or
//! TensorFlow.js (`.deps/node`) print a SKIP line and pass when those are absent; the loader's
//! missing-directory error and the decoding/discrepancy checks on synthetic outputs always run.
mod common;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use featjnd_research::coco::{self, IouType};
use featjnd_research::data::{deepforest, photos};
use featjnd_research::eval::nanodet::{self as dec, DecodeParams, Det, GtImage};
use featjnd_research::model::nanodet::{self, NanoDet};
use featjnd_research::model::SplitModel;
use featjnd_research::{io, paths, Error};
use tch::{Device, Tensor};

/// labelme 6.3.1's three VOC 2011 photos (9 person/bus/car boxes), all in the held-out split.
const VOC: [&str; 3] = ["labelme-voc-2011_000003", "labelme-voc-2011_000006", "labelme-voc-2011_000025"];
const TOL: f64 = 1e-3;

fn model_dir() -> PathBuf {
    nanodet::default_dir()
}

fn photo_dir() -> PathBuf {
    paths::repo(".deps/data/photos")
}

/// The model, or a SKIP line for `test` when the files are absent.
fn model_or_skip(test: &str) -> Option<NanoDet> {
    let dir = model_dir();
    if !dir.join("nanodet.json").is_file() {
        common::skip!("SKIP {test}: {} absent (run scripts/fetch-real.sh)", dir.display());
        return None;
    }
    Some(NanoDet::load(&dir, Device::Cpu).expect("load NanoDet"))
}

fn photos_or_skip(test: &str) -> Option<Vec<PathBuf>> {
    let v: Vec<PathBuf> = VOC.iter().map(|s| photo_dir().join(format!("{s}.png"))).collect();
    if let Some(p) = v.iter().find(|p| !p.is_file()) {
        common::skip!("SKIP {test}: {} absent (run scripts/fetch-real.sh)", p.display());
        return None;
    }
    Some(v)
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shape mismatch");
    (a - b).abs().max().double_value(&[])
}

fn checkpoint_why<T>(r: featjnd_research::Result<T>) -> String {
    match r {
        Err(Error::Checkpoint { why, .. }) => why,
        Err(e) => panic!("expected Error::Checkpoint, got {e:?}"),
        Ok(_) => panic!("expected Error::Checkpoint, got Ok"),
    }
}

// ---------------------------------------------------------------------------------------------
// loading

#[test]
fn missing_model_dir_says_run_fetch_real() {
    let why = checkpoint_why(NanoDet::load(Path::new("/nonexistent/nanodet"), Device::Cpu));
    assert!(why.contains("scripts/fetch-real.sh"), "{why}");
}

/// The module structure equals the layer table; 3,786,068 parameters (docs/nanodet.md §1).
#[test]
fn architecture_matches_the_layer_table() {
    let m = NanoDet::new(Device::Cpu);
    let vars = m.vs.variables();
    assert_eq!(vars.len(), 2 * nanodet::LAYERS.len());
    let n: i64 = vars.values().map(|v| v.numel() as i64).sum();
    assert_eq!(n, 3_786_068);
    assert!(vars.contains_key("backbone.stage4.res2.mid_conv.weight"));
    assert_eq!(vars["head.s32.out.weight"].size(), [124, 128, 1, 1]);
}

/// A copy of the model directory with `edit` applied to the manifest JSON (the .bin is copied
/// unless `bin` gives replacement bytes).
fn edited_copy(edit: impl Fn(&mut serde_json::Value), bin: Option<Vec<u8>>) -> tempfile::TempDir {
    let src = model_dir();
    let tmp = tempfile::tempdir().unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(src.join("nanodet.json")).unwrap()).unwrap();
    edit(&mut json);
    std::fs::write(tmp.path().join("nanodet.json"), serde_json::to_string(&json).unwrap()).unwrap();
    let bytes = bin.unwrap_or_else(|| std::fs::read(src.join("nanodet.bin")).unwrap());
    std::fs::write(tmp.path().join("nanodet.bin"), bytes).unwrap();
    tmp
}

fn weight_mut<'a>(json: &'a mut serde_json::Value, name: &str) -> &'a mut serde_json::Value {
    json["weightsManifest"][0]["weights"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|w| w["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in the manifest"))
}

#[test]
fn strict_load_names_missing_misshaped_and_unused_weights() {
    if model_or_skip("strict_load_names_missing_misshaped_and_unused_weights").is_none() {
        return;
    }
    // A renamed bias: missing under its name, unused under the new one.
    let t = edited_copy(|j| weight_mut(j, "unknown_0")["name"] = "unknown_0_renamed".into(), None);
    let why = checkpoint_why(NanoDet::load(t.path(), Device::Cpu));
    assert!(why.contains("missing weights: unknown_0 (for backbone.stem.conv.bias)"), "{why}");
    assert!(why.contains("unused float weights: unknown_0_renamed"), "{why}");
    // Same element count, other shape: mis-shaped, named with the layer.
    let t = edited_copy(|j| weight_mut(j, "PartitionedCall/split")["shape"] = serde_json::json!([3, 3, 32, 3]), None);
    let why = checkpoint_why(NanoDet::load(t.path(), Device::Cpu));
    assert!(why.contains("PartitionedCall/split (for backbone.stem.conv.weight): [3, 3, 32, 3], want [3, 3, 3, 32]"), "{why}");
    // A truncated weight file.
    let mut bin = std::fs::read(model_dir().join("nanodet.bin")).unwrap();
    bin.truncate(bin.len() - 100);
    let t = edited_copy(|_| {}, Some(bin));
    let why = checkpoint_why(NanoDet::load(t.path(), Device::Cpu));
    assert!(why.contains("unknown_72") && why.contains("truncated"), "{why}");
    // One byte too many.
    let mut bin = std::fs::read(model_dir().join("nanodet.bin")).unwrap();
    bin.push(0);
    let t = edited_copy(|_| {}, Some(bin));
    let why = checkpoint_why(NanoDet::load(t.path(), Device::Cpu));
    assert!(why.contains("describes 7574558 bytes, the weight files hold 7574559"), "{why}");
}

// ---------------------------------------------------------------------------------------------
// splits

#[test]
fn head_then_tail_equals_forward_at_every_split() {
    let Some(m) = model_or_skip("head_then_tail_equals_forward_at_every_split") else { return };
    assert_eq!(m.split_points(), ["stage1", "stage2", "backbone", "neck"]);
    // A batch of two non-square inputs (any multiple of 32 works; 416×416 in the port test).
    let x = Tensor::from_slice(&(0..2 * 3 * 224 * 288i64).map(|i| ((i * 7919) % 1000) as f32 / 999.0).collect::<Vec<_>>())
        .view([2, 3, 224, 288]);
    let full = tch::no_grad(|| m.forward(&x)).unwrap();
    assert_eq!(full[0].size(), [2, nanodet::num_points(224, 288), 80]);
    assert_eq!(full[1].size(), [2, nanodet::num_points(224, 288), 44]);
    let shapes: [(&str, Vec<Vec<i64>>); 4] = [
        ("stage1", vec![vec![2, 64, 56, 72]]),
        ("stage2", vec![vec![2, 128, 28, 36]]),
        ("backbone", vec![vec![2, 128, 28, 36], vec![2, 256, 14, 18], vec![2, 512, 7, 9]]),
        ("neck", vec![vec![2, 128, 28, 36], vec![2, 128, 14, 18], vec![2, 128, 7, 9]]),
    ];
    for (split, want) in shapes {
        let (f, out) = tch::no_grad(|| {
            let f = m.head(&x, split).unwrap();
            let out = m.tail(&f, split).unwrap();
            (f, out)
        });
        assert_eq!(f.iter().map(|t| t.size()).collect::<Vec<_>>(), want, "{split}");
        for (a, b) in out.iter().zip(&full) {
            let d = max_abs(a, b);
            assert!(d <= 1e-5, "{split}: head+tail differs from forward by {d}");
        }
    }
    // Misuse is an error, not a libtorch panic.
    assert!(matches!(m.head(&x, "stage3"), Err(Error::Model(_))));
    assert!(matches!(m.head(&x.narrow(2, 0, 200), "neck"), Err(Error::Shape(_))));
    let f = tch::no_grad(|| m.head(&x, "neck")).unwrap();
    assert!(matches!(m.tail(&f[..2], "neck"), Err(Error::Model(_))));
    assert!(matches!(m.tail(&[f[0].shallow_clone(), f[2].shallow_clone(), f[1].shallow_clone()], "neck"), Err(Error::Shape(_))));
    assert!(matches!(m.tail(&f[..1], "stage1"), Err(Error::Shape(_))));
    assert!(matches!(m.tail(&f[1..2], "stage2"), Err(Error::Shape(_))));
}

// ---------------------------------------------------------------------------------------------
// the port against TensorFlow.js

const N: &str = "PartitionedCall/onnx_tf_prefix";

/// `(what, graph node)` of the split features compared: stage1, stage2 = C3, backbone = C3..C5,
/// neck = P3..P5 (docs/nanodet.md §6).
fn split_nodes() -> Vec<(&'static str, String)> {
    vec![
        ("stage1", format!("{N}_Concat_12")),
        ("C3 (stage2)", format!("{N}_Concat_27")),
        ("C3 (backbone.0)", format!("{N}_Concat_27")),
        ("C4 (backbone.1)", format!("{N}_Concat_42")),
        ("C5 (backbone.2)", format!("{N}_Concat_62")),
        ("P3 (neck.0)", format!("{N}_Add_107")),
        ("P4 (neck.1)", format!("{N}_Add_128")),
        ("P5 (neck.2)", format!("{N}_Add_149")),
    ]
}

/// The class logits per level: output 0 of the SplitV nodes, `[1, 80, g, g]`.
fn logit_nodes() -> [String; 3] {
    [format!("{N}_Split_153:0"), format!("{N}_Split_164:0"), format!("{N}_Split_175:0")]
}

fn tfjs_dir() -> PathBuf {
    std::env::var_os("FEATJND_TFJS_NODE_MODULES").map(PathBuf::from).unwrap_or_else(|| paths::repo(".deps/node/node_modules"))
}

fn node_or_skip(test: &str) -> bool {
    match Command::new("node").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => {
            common::skip!("SKIP {test}: node not found");
            return false;
        }
    }
    let core = tfjs_dir().join("@tensorflow/tfjs-converter");
    if !core.is_dir() {
        common::skip!("SKIP {test}: {} absent (run scripts/fetch-real.sh)", core.display());
        return false;
    }
    true
}

fn load_ref(dir: &Path, stem: &str, node: &str) -> Tensor {
    let file = dir.join(format!("{stem}.{}.npy", node.replace(['/', ':'], "__")));
    io::load_tensor(&file, None).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

#[test]
fn port_matches_tensorflow_js_on_real_photos() {
    let test = "port_matches_tensorflow_js_on_real_photos";
    let Some(m) = model_or_skip(test) else { return };
    let Some(files) = photos_or_skip(test) else { return };
    if !node_or_skip(test) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (in_dir, ref_dir) = (tmp.path().join("in"), tmp.path().join("ref"));
    std::fs::create_dir_all(&in_dir).unwrap();
    // Rust makes the inputs; both sides read the same normalised pixels.
    let mut xs = Vec::new();
    let mut npys = Vec::new();
    for (stem, f) in VOC.iter().zip(&files) {
        let x = nanodet::input_tensor(&photos::load_photo(f).unwrap().image).unsqueeze(0);
        let npy = in_dir.join(format!("{stem}.npy"));
        io::save_tensor(&npy, &m.normalize(&x)).unwrap();
        npys.push(npy);
        xs.push(x);
    }
    let mut nodes: Vec<String> = split_nodes().into_iter().map(|(_, n)| n).collect();
    nodes.dedup();
    nodes.extend(logit_nodes());
    let t0 = Instant::now();
    let out = Command::new("node")
        .arg(paths::repo("tools/nanodet_ref.mjs"))
        .arg("--model")
        .arg(model_dir().join("nanodet.json"))
        .arg("--tfjs")
        .arg(tfjs_dir())
        .arg("--out")
        .arg(&ref_dir)
        .arg("--nodes")
        .arg(nodes.join(","))
        .args(&npys)
        .output()
        .expect("run node");
    let node_s = t0.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "nanodet_ref.mjs failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(ref_dir.join("index.json")).unwrap()).unwrap();
    let tfjs_ms: Vec<f64> = index["runs"].as_array().unwrap().iter().map(|r| r["ms"][0].as_f64().unwrap()).collect();

    let mut rows: Vec<(String, Vec<f64>)> = Vec::new();
    let mut record = |what: String, d: f64| match rows.iter_mut().find(|r| r.0 == what) {
        Some(r) => r.1.push(d),
        None => rows.push((what, vec![d])),
    };
    let mut rust_ms = Vec::new();
    let _ = tch::no_grad(|| m.forward(&xs[0])).unwrap(); // warm-up
    for (stem, x) in VOC.iter().zip(&xs) {
        // The written input is the model's own normalisation of x, bit for bit.
        assert_eq!(max_abs(&io::load_tensor(&in_dir.join(format!("{stem}.npy")), None).unwrap(), &m.normalize(x)), 0.0);
        let t = Instant::now();
        let outs = tch::no_grad(|| m.forward(x)).unwrap();
        rust_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let (cls, reg) = (outs[0].get(0), outs[1].get(0));
        let mut row0 = 0;
        for (l, s) in nanodet::STRIDES.iter().enumerate() {
            let g = nanodet::INPUT_SIZE / s;
            let (c, r) = (cls.narrow(0, row0, g * g), reg.narrow(0, row0, g * g));
            let score_node = if l == 0 { "Identity".to_string() } else { format!("Identity_{l}") };
            record(format!("scores s{s} [{},80]", g * g), max_abs(&c.sigmoid(), &load_ref(&ref_dir, stem, &score_node).get(0)));
            record(
                format!("box logits s{s} [{},44]", g * g),
                max_abs(&r, &load_ref(&ref_dir, stem, &format!("Identity_{}", l + 3)).get(0)),
            );
            let lg = load_ref(&ref_dir, stem, &logit_nodes()[l]).get(0).reshape([80, g * g]).transpose(0, 1);
            record(format!("class logits s{s} [{},80]", g * g), max_abs(&c, &lg));
            row0 += g * g;
        }
        let mut feats = Vec::new();
        for split in ["stage1", "stage2", "neck", "backbone"] {
            feats.extend(tch::no_grad(|| m.head(x, split)).unwrap());
        }
        // stage1, C3 (stage2), P3..P5 (neck), C3..C5 (backbone).
        let order = [0, 1, 5, 6, 7, 2, 3, 4];
        let nodes = split_nodes();
        for (f, &k) in feats.iter().zip(&order) {
            let (what, node) = &nodes[k];
            record(format!("{what} {:?}", &f.size()[1..]), max_abs(f, &load_ref(&ref_dir, stem, node)));
        }
    }
    println!("max |rust - tfjs| per tensor ({}):", VOC.join(", "));
    let mut worst: f64 = 0.0;
    for (what, ds) in &rows {
        println!("  {what:38} {}", ds.iter().map(|d| format!("{d:.1e}")).collect::<Vec<_>>().join("  "));
        worst = ds.iter().fold(worst, |w, &d| w.max(d));
    }
    println!(
        "forward per 416x416 image: rust (tch CPU) {} ms; tfjs (pure-JS CPU) {} ms; node process {node_s:.1} s",
        rust_ms.iter().map(|t| format!("{t:.0}")).collect::<Vec<_>>().join("/"),
        tfjs_ms.iter().map(|t| format!("{t:.0}")).collect::<Vec<_>>().join("/"),
    );
    assert!(worst <= TOL, "max abs diff {worst:.2e} > {TOL:e}");
    assert_eq!(rows.len(), 17, "{rows:?}");
}

// ---------------------------------------------------------------------------------------------
// decoding

/// Synthetic outputs for a 64×64 input: one confident point of class 2 at stride-8 cell (3, 4)
/// with every side at bin 2, a weaker duplicate of it next door (suppressed by NMS), and a
/// confident point of class 5 at the same place (kept: NMS is per class).
#[test]
fn decode_synthetic_points() {
    let (h, w) = (64, 64);
    let n = nanodet::num_points(h, w) as usize;
    let mut cls = vec![-20f32; n * 80];
    let mut reg = vec![0f32; n * 44];
    let row = 4 * 8 + 3; // y = 4, x = 3 on the 8×8 stride-8 grid
                         // Bins (left, top, right, bottom); the neighbour one cell to the right predicts the same box.
    let peaked = |reg: &mut Vec<f32>, r: usize, bins: [usize; 4]| {
        for (side, b) in bins.iter().enumerate() {
            reg[r * 44 + side * 11 + b] = 30.0;
        }
    };
    cls[row * 80 + 2] = 4.0;
    cls[row * 80 + 5] = 3.0;
    cls[(row + 1) * 80 + 2] = 2.0;
    peaked(&mut reg, row, [2, 2, 2, 2]);
    peaked(&mut reg, row + 1, [3, 2, 1, 2]);
    let outs = [Tensor::from_slice(&cls).view([1, n as i64, 80]), Tensor::from_slice(&reg).view([1, n as i64, 44])];
    let dets = dec::decode(&outs, h, w, &DecodeParams::default()).unwrap();
    assert_eq!(dets.len(), 1);
    let d = &dets[0];
    assert_eq!(d.len(), 2, "{d:?}");
    let (cx, cy) = (3.5 * 8.0, 4.5 * 8.0);
    let want = [cx - 16.0, cy - 16.0, cx + 16.0, cy + 16.0];
    assert_eq!((d[0].class, d[1].class), (2, 5));
    for (a, b) in d[0].xyxy.iter().zip(&want) {
        assert!((a - b).abs() < 1e-3, "{:?} vs {want:?}", d[0].xyxy);
    }
    assert!((d[0].score - 1.0 / (1.0 + (-4f32).exp())).abs() < 1e-6);
    // COCO export: ids and xywh.
    let c = dec::to_coco(&dets, &[7]);
    assert_eq!((c[0].image_id, c[0].category_id, c[1].category_id), (7, 3, 6));
    assert!((c[0].bbox.unwrap()[2] - 32.0).abs() < 1e-3);
    // Wrong shapes are an error.
    assert!(matches!(dec::decode(&outs, 96, 64, &DecodeParams::default()), Err(Error::Shape(_))));
    // The discrepancy is zero on equal outputs and grows with a perturbation.
    let d0 = dec::discrepancy(&outs, &outs).double_value(&[0]);
    let pert = [&outs[0] + 0.5, &outs[1] * 0.8];
    let d1 = dec::discrepancy(&outs, &pert).double_value(&[0]);
    assert!(d0.abs() < 1e-6 && d1 > 1e-3, "{d0} {d1}");
}

#[test]
fn voc_names_map_to_coco_classes() {
    assert_eq!(dec::class_index("person"), Some(0));
    assert_eq!(dec::class_index("car"), Some(2));
    assert_eq!(dec::class_index("bus"), Some(5));
    assert_eq!(dec::class_index("motorbike"), Some(3));
    assert_eq!(dec::class_index("tvmonitor"), Some(62));
    assert_eq!(dec::class_index("unicorn"), None);
    assert_eq!(dec::COCO_IDS[79], 90);
}

/// Real ground truth: labelme's VOC boxes (person, bus, car). Reports, per box, the best IoU of a
/// same-class detection scoring ≥ 0.3, and the COCO AP / AP50 over those three classes.
#[test]
fn detects_the_voc_boxes_of_labelme_photos() {
    let test = "detects_the_voc_boxes_of_labelme_photos";
    let Some(m) = model_or_skip(test) else { return };
    let Some(files) = photos_or_skip(test) else { return };
    let mut gts = Vec::new();
    let mut dets = Vec::new();
    let mut found = 0;
    let mut total = 0;
    for (i, (stem, f)) in VOC.iter().zip(&files).enumerate() {
        let photo = photos::load_photo(f).unwrap();
        let x = nanodet::input_tensor(&photo.image).unsqueeze(0);
        let outs = tch::no_grad(|| m.forward(&x)).unwrap();
        let s = nanodet::INPUT_SIZE;
        let d = dec::decode(&outs, s, s, &DecodeParams::default()).unwrap().remove(0);
        let d = dec::rescale(&d, (s, s), (photo.height(), photo.width()));
        let ann = deepforest::parse_voc(&std::fs::read_to_string(photo_dir().join(format!("annotations/{stem}.xml"))).unwrap()).unwrap();
        let boxes: Vec<(usize, [f32; 4])> = ann
            .boxes
            .iter()
            .map(|b| {
                let c = dec::class_index(&b.label).unwrap_or_else(|| panic!("VOC class {}", b.label));
                (c, [b.bbox[0], b.bbox[1], b.bbox[0] + b.bbox[2], b.bbox[1] + b.bbox[3]])
            })
            .collect();
        let mut line = format!("{stem}:");
        for (c, b) in &boxes {
            let best = d.iter().filter(|q| q.class == *c && q.score >= 0.3).map(|q| dec::iou(&q.xyxy, b)).fold(0f32, f32::max);
            total += 1;
            found += usize::from(best >= 0.5);
            // The best-overlapping same-class detection at any score (down to 0.05).
            let any = d.iter().filter(|q| q.class == *c).map(|q| (dec::iou(&q.xyxy, b), q.score)).fold((0f32, 0f32), |m, v| {
                if v.0 > m.0 {
                    v
                } else {
                    m
                }
            });
            line.push_str(&format!(" {} IoU {best:.2} (any score: {:.2} at {:.2});", dec::COCO_NAMES[*c], any.0, any.1));
        }
        let top: Vec<&Det> = d.iter().take(6).collect();
        line.push_str(&format!(
            " top: {}",
            top.iter().map(|q| format!("{} {:.2}", dec::COCO_NAMES[q.class], q.score)).collect::<Vec<_>>().join(", ")
        ));
        println!("{line}");
        gts.push(GtImage { id: i as i64 + 1, height: photo.height(), width: photo.width(), boxes });
        dets.push(d);
    }
    let classes = ["person", "car", "bus"].map(|n| dec::class_index(n).unwrap());
    let gt = dec::ground_truth(&gts, &classes);
    let stats = coco::evaluate(&gt, &dec::to_coco(&dets, &[1, 2, 3]), IouType::Bbox).unwrap();
    println!("VOC boxes found (same class, score >= 0.3, IoU >= 0.5): {found} of {total}; COCO AP {:.3}, AP50 {:.3}", stats.ap, stats.ap50);
    assert_eq!(total, 9);
    assert!(found >= 7, "only {found} of {total} VOC boxes found");
    assert!(stats.ap50 >= 0.5, "AP50 {:.3}", stats.ap50);
    // The clean detections as pseudo ground truth score perfectly against themselves.
    let ids = [1, 2, 3];
    let sizes: Vec<(u32, u32)> = gts.iter().map(|g| (g.height, g.width)).collect();
    let pgt = dec::pseudo_ground_truth(&dets, &ids, &sizes, 0.3);
    let kept: Vec<Vec<Det>> = dets.iter().map(|d| d.iter().filter(|q| q.score >= 0.3).copied().collect()).collect();
    let self_stats = coco::evaluate(&pgt, &dec::to_coco(&kept, &ids), IouType::Bbox).unwrap();
    assert!((self_stats.ap - 1.0).abs() < 1e-9, "{}", self_stats.summary());
}
