//! DeepForest (VOC boxes) and stardist (instance masks) loaders: hand-made fixtures, malformed
//! input, and the real files from `scripts/setup.sh` when `.deps/data` has them (else SKIP).
use std::path::Path;

use featjnd_research::data::deepforest::{self, parse_csv, parse_voc, TreeBox};
use featjnd_research::data::stardist::{self, read_gray_tiff, Nuclei};
use featjnd_research::Error;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/real");

fn io_msg<T: std::fmt::Debug>(r: featjnd_research::Result<T>) -> String {
    match r {
        Err(Error::Io(m)) => m,
        other => panic!("expected Error::Io, got {other:?}"),
    }
}

fn at(t: &tch::Tensor, idx: [i64; 3]) -> f64 {
    t.double_value(&idx)
}

/// An 8×6 RGB PNG with R = 10·x, G = 10·y, B = 255.
fn write_png(path: &Path) {
    let img = image::RgbImage::from_fn(8, 6, |x, y| image::Rgb([10 * x as u8, 10 * y as u8, 255]));
    img.save_with_format(path, image::ImageFormat::Png).unwrap();
}

#[test]
fn voc_fixture_parses_to_xywh() {
    let ann = parse_voc(&std::fs::read_to_string(Path::new(FIXTURES).join("two_trees.xml")).unwrap()).unwrap();
    assert_eq!(ann.file_name, "two_trees.png");
    assert_eq!(ann.size, Some((6, 8)));
    assert_eq!(
        ann.boxes,
        vec![TreeBox { label: "Tree".into(), bbox: [1.0, 1.0, 3.0, 2.0] }, TreeBox { label: "Dead".into(), bbox: [5.0, 2.0, 3.0, 4.0] },]
    );
}

#[test]
fn malformed_voc_is_an_error() {
    let m = io_msg(parse_voc(&std::fs::read_to_string(Path::new(FIXTURES).join("malformed.xml")).unwrap()));
    assert!(m.contains("VOC XML"), "{m}");
    let obj = |b: &str| format!("<annotation><filename>a.png</filename><object><name>T</name>{b}</object></annotation>");
    for (xml, want) in [
        ("<notvoc/>".to_string(), "not <annotation>"),
        ("<annotation/>".to_string(), "lacks <filename>"),
        (obj(""), "lacks <bndbox>"),
        (obj("<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>4</xmax></bndbox>"), "lacks <ymax>"),
        (obj("<bndbox><xmin>a</xmin><ymin>1</ymin><xmax>4</xmax><ymax>3</ymax></bndbox>"), "not a number"),
        (obj("<bndbox><xmin>4</xmin><ymin>1</ymin><xmax>4</xmax><ymax>3</ymax></bndbox>"), "xmin < xmax"),
        ("<annotation><filename>a</filename><size><width>0</width><height>2</height></size></annotation>".into(), "<size>"),
    ] {
        let m = io_msg(parse_voc(&xml));
        assert!(m.contains(want), "{xml}: {m}");
    }
}

#[test]
fn csv_groups_by_image_and_rejects_bad_lines() {
    let csv = "image_path,xmin,ymin,xmax,ymax,label\na.png,1,2,5,7,Tree\nb.png,0,0,1,1,Dead\n\na.png,2,2,3,3,Tree\n";
    let anns = parse_csv(csv).unwrap();
    assert_eq!(anns.len(), 2);
    assert_eq!((anns[0].file_name.as_str(), anns[0].boxes.len(), anns[0].size), ("a.png", 2, None));
    assert_eq!(anns[0].boxes[0].bbox, [1.0, 2.0, 4.0, 5.0]);
    assert_eq!(anns[1].boxes[0].label, "Dead");
    for (csv, want) in [
        ("", "empty"),
        ("image_path,xmin,ymin,xmax,label\n", "no `ymax` column"),
        ("image_path,xmin,ymin,xmax,ymax,label\na.png,1,2,5\n", "line 2 has 4 fields"),
        ("image_path,xmin,ymin,xmax,ymax,label\na.png,1,x,5,7,T\n", "not a number"),
        ("image_path,xmin,ymin,xmax,ymax,label\na.png,1,7,5,2,T\n", "xmin < xmax"),
    ] {
        let m = io_msg(parse_csv(csv));
        assert!(m.contains(want), "{csv:?}: {m}");
    }
}

#[test]
fn voc_image_loads_and_crops_clip_boxes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(Path::new(FIXTURES).join("two_trees.xml"), dir.path().join("two_trees.xml")).unwrap();
    write_png(&dir.path().join("two_trees.png"));
    let imgs = deepforest::load_dir(dir.path()).unwrap();
    assert_eq!(imgs.len(), 1);
    let t = &imgs[0];
    assert_eq!(t.image.size(), [3, 6, 8]);
    assert!((at(&t.image, [0, 2, 5]) - 50.0 / 255.0).abs() < 1e-6);
    assert!((at(&t.image, [1, 2, 5]) - 20.0 / 255.0).abs() < 1e-6);
    assert_eq!(at(&t.image, [2, 0, 0]), 1.0);

    // Rows start at 0 and 2 (flush with the bottom edge), columns at 0 and 4.
    let crops = t.crops(4, 4).unwrap();
    let got: Vec<(usize, usize, Vec<[f32; 4]>)> = crops.iter().map(|c| (c.x, c.y, c.boxes.iter().map(|b| b.bbox).collect())).collect();
    assert_eq!(
        got,
        vec![
            (0, 0, vec![[1.0, 1.0, 3.0, 2.0]]),
            (4, 0, vec![[1.0, 2.0, 3.0, 2.0]]), // the Dead box, exactly half inside: kept
            (0, 2, vec![[1.0, 0.0, 3.0, 1.0]]), // the Tree box, exactly half inside: kept
            (4, 2, vec![[1.0, 0.0, 3.0, 4.0]]),
        ]
    );
    assert_eq!(crops[3].image.size(), [3, 4, 4]);
    assert!((at(&crops[3].image, [0, 0, 0]) - 40.0 / 255.0).abs() < 1e-6);
    // With 3 px windows, the Tree box keeps 4/6 of its area in (0, 0) but only 2/6 in (3, 0):
    // the latter (and the 1/12 of the Dead box there) is dropped.
    let c = t.crops(3, 3).unwrap();
    let boxes_at = |x, y| c.iter().find(|c| (c.x, c.y) == (x, y)).unwrap().boxes.iter().map(|b| b.bbox).collect::<Vec<_>>();
    assert_eq!(boxes_at(0, 0), vec![[1.0, 1.0, 2.0, 2.0]]);
    assert_eq!(boxes_at(3, 0), Vec::<[f32; 4]>::new());
    assert!(matches!(t.crops(7, 1), Err(Error::Arg(_))));
    assert!(matches!(t.crops(4, 0), Err(Error::Arg(_))));
}

#[test]
fn voc_size_mismatch_and_missing_image_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let xml = std::fs::read_to_string(Path::new(FIXTURES).join("two_trees.xml")).unwrap();
    std::fs::write(dir.path().join("a.xml"), &xml).unwrap();
    let m = io_msg(deepforest::load_voc(&dir.path().join("a.xml")));
    assert!(m.contains("two_trees.png"), "{m}");
    write_png(&dir.path().join("two_trees.png"));
    std::fs::write(dir.path().join("a.xml"), xml.replace("<width>8", "<width>9")).unwrap();
    let m = io_msg(deepforest::load_voc(&dir.path().join("a.xml")));
    assert!(m.contains("<size> says (6, 9)"), "{m}");
    std::fs::write(dir.path().join("two_trees.png"), b"not a png").unwrap();
    io_msg(deepforest::load_voc(&dir.path().join("a.xml")));
}

/// A grey uint16 TIFF of `h`×`w`.
fn tiff16(path: &Path, w: u32, h: u32, data: &[u16]) {
    let f = std::fs::File::create(path).unwrap();
    let mut enc = tiff::encoder::TiffEncoder::new(f).unwrap();
    enc.write_image::<tiff::encoder::colortype::Gray16>(w, h, data).unwrap();
}

#[test]
fn stardist_fixture_two_instances() {
    // 4×6 labels: nucleus 3 is an L in the top-left, nucleus 7 a 2×2 block bottom-right.
    #[rustfmt::skip]
    let labels: [u16; 24] = [
        3, 3, 0, 0, 0, 0,
        3, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 7, 7,
        0, 0, 0, 0, 7, 7,
    ];
    let raw: Vec<u16> = (0..24).map(|i| 1000 + 100 * i).collect();
    let dir = tempfile::tempdir().unwrap();
    tiff16(&dir.path().join("img2d.tif"), 6, 4, &raw);
    tiff16(&dir.path().join("mask2d.tif"), 6, 4, &labels);
    let n = Nuclei::load(dir.path()).unwrap();
    assert_eq!((n.height, n.width), (4, 6));
    assert_eq!(
        n.nuclei.iter().map(|o| (o.label, o.area, o.bbox)).collect::<Vec<_>>(),
        vec![(3, 3, [0.0, 0.0, 2.0, 2.0]), (7, 4, [4.0, 2.0, 2.0, 2.0]),]
    );
    assert_eq!(n.nuclei[0].mask[..7], [1, 1, 0, 0, 0, 0, 1]);
    // Percentiles 1 / 99.8 of a ramp: the ends clip to 0 and 1, the middle is linear.
    assert_eq!((n.image[0], n.image[23]), (0.0, 1.0));
    let (lo, hi) = (1000.0 + 100.0 * 0.23, 1000.0 + 100.0 * 22.954);
    assert!((n.image[12] as f64 - (2200.0 - lo) / (hi - lo)).abs() < 1e-5);
    assert_eq!(n.to_tensor().size(), [1, 4, 6]);

    let coco = n.to_coco();
    let gt = featjnd_research::coco::parse_gt(&coco.to_string()).unwrap();
    assert_eq!((gt.images.len(), gt.annotations.len(), gt.categories.len()), (1, 2, 1));
    for (a, o) in gt.annotations.iter().zip(&n.nuclei) {
        let rle = featjnd_research::coco::decode_segmentation(a.segmentation.as_ref().unwrap(), &gt.images[0]).unwrap();
        assert_eq!(rle.area(), o.area as u64);
        assert_eq!(a.bbox.unwrap().map(|v| v as f32), o.bbox);
    }
}

#[test]
fn stardist_bad_tiffs_are_errors() {
    assert!(io_msg(read_gray_tiff(b"II*\0garbage")).contains("bad grey TIFF"));
    let dir = tempfile::tempdir().unwrap();
    let rgb = dir.path().join("rgb.tif");
    let f = std::fs::File::create(&rgb).unwrap();
    tiff::encoder::TiffEncoder::new(f).unwrap().write_image::<tiff::encoder::colortype::RGB8>(1, 1, &[1, 2, 3]).unwrap();
    assert!(io_msg(read_gray_tiff(&std::fs::read(&rgb).unwrap())).contains("expected grey"));
    // Missing files and mismatched sizes.
    assert!(io_msg(Nuclei::load(dir.path())).contains("img2d.tif"));
    tiff16(&dir.path().join("img2d.tif"), 2, 2, &[0; 4]);
    tiff16(&dir.path().join("mask2d.tif"), 2, 1, &[0; 2]);
    assert!(matches!(Nuclei::load(dir.path()), Err(Error::Shape(_))));
    assert!(matches!(Nuclei::from_raw(2, 2, &[0; 3], &[0; 4]), Err(Error::Shape(_))));
    // A flat image normalises to 0 instead of dividing by zero.
    assert!(Nuclei::from_raw(1, 2, &[5, 5], &[0, 1]).unwrap().image.iter().all(|&v| v == 0.0));
}

#[test]
fn real_deepforest_boxes() {
    let dir = deepforest::default_dir();
    if !dir.join("OSBS_029.xml").exists() {
        println!("SKIP real_deepforest_boxes: {} absent (run scripts/setup.sh)", dir.display());
        return;
    }
    let imgs = deepforest::load_dir(&dir).unwrap();
    let total: usize = imgs.iter().map(|t| t.boxes.len()).sum();
    for t in &imgs {
        let (h, w) = t.size();
        println!("deepforest {}: {h}x{w}, {} boxes", t.file_name, t.boxes.len());
        for b in &t.boxes {
            let [x, y, bw, bh] = b.bbox;
            assert!(x >= 0.0 && y >= 0.0 && x + bw <= w as f32 && y + bh <= h as f32, "{} {b:?}", t.file_name);
        }
        let (mn, mx) = (t.image.min().double_value(&[]), t.image.max().double_value(&[]));
        assert!(0.0 <= mn && mn < mx && mx <= 1.0);
    }
    println!("deepforest: {} annotated images, {total} boxes", imgs.len());
    assert_eq!(imgs.len(), 4);
    assert!((900..=1000).contains(&total), "{total}");

    // The CSV of OSBS_029 lists the same boxes as its XML.
    let csv = parse_csv(&std::fs::read_to_string(dir.join("OSBS_029.csv")).unwrap()).unwrap();
    let osbs = imgs.iter().find(|t| t.file_name == "OSBS_029.tif").unwrap();
    assert_eq!(csv.len(), 1);
    assert_eq!(csv[0].boxes, osbs.boxes);

    let crops = osbs.crops(200, 100).unwrap();
    let kept: usize = crops.iter().map(|c| c.boxes.len()).sum();
    println!("deepforest OSBS_029: {} crops of 200 px at stride 100 hold {kept} boxes", crops.len());
    assert_eq!(crops.len(), 9);
    assert!(kept >= osbs.boxes.len());
}

#[test]
fn real_stardist_nuclei() {
    let dir = stardist::default_dir();
    if !dir.join("mask2d.tif").exists() {
        println!("SKIP real_stardist_nuclei: {} absent (run scripts/setup.sh)", dir.display());
        return;
    }
    let n = Nuclei::load(&dir).unwrap();
    let areas: Vec<usize> = n.nuclei.iter().map(|o| o.area).collect();
    println!(
        "stardist: {}x{}, {} nuclei, areas {}..{}",
        n.height,
        n.width,
        n.nuclei.len(),
        areas.iter().min().unwrap(),
        areas.iter().max().unwrap()
    );
    assert_eq!((n.height, n.width), (512, 512));
    assert!((110..=140).contains(&n.nuclei.len()), "{}", n.nuclei.len());
    let gt = featjnd_research::coco::parse_gt(&n.to_coco().to_string()).unwrap();
    assert_eq!(gt.annotations.len(), n.nuclei.len());
    for (a, o) in gt.annotations.iter().zip(&n.nuclei) {
        let rle = featjnd_research::coco::decode_segmentation(a.segmentation.as_ref().unwrap(), &gt.images[0]).unwrap();
        assert_eq!(rle.area(), o.area as u64);
    }
}
