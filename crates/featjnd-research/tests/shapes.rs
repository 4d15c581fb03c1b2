//! The procedural shapes scenes: determinism, exact labels, occlusion, and COCO compatibility.
use featjnd_research::coco::{self, Detection, IouType};
use featjnd_research::data::shapes::{generate, to_coco, Scene, SceneConfig, ShapeClass, Texture};

fn small() -> SceneConfig {
    SceneConfig { size: (64, 64), ..SceneConfig::default() }
}

fn pixel(s: &Scene, x: usize, y: usize) -> [f32; 3] {
    let hw = s.height * s.width;
    [0, 1, 2].map(|c| s.image[c * hw + y * s.width + x])
}

#[test]
fn deterministic_per_seed_and_index() {
    let cfg = small();
    for index in 0..5 {
        assert_eq!(generate(7, index, &cfg), generate(7, index, &cfg));
    }
    assert_ne!(generate(7, 0, &cfg).image, generate(7, 1, &cfg).image);
    assert_ne!(generate(7, 0, &cfg).image, generate(8, 0, &cfg).image);
}

#[test]
fn boxes_and_areas_are_exact() {
    let cfg = small();
    for index in 0..50 {
        let s = generate(1, index, &cfg);
        for o in &s.objects {
            let on: Vec<(usize, usize)> =
                (0..s.height).flat_map(|y| (0..s.width).map(move |x| (x, y))).filter(|&(x, y)| o.mask[y * s.width + x] != 0).collect();
            assert_eq!(o.area, on.len());
            assert!(o.area >= cfg.min_area);
            let x0 = on.iter().map(|p| p.0).min().unwrap();
            let x1 = on.iter().map(|p| p.0).max().unwrap();
            let y0 = on.iter().map(|p| p.1).min().unwrap();
            let y1 = on.iter().map(|p| p.1).max().unwrap();
            assert_eq!(o.bbox, [x0 as f32, y0 as f32, (x1 - x0 + 1) as f32, (y1 - y0 + 1) as f32], "scene {index}");
            assert!(o.mask.iter().all(|&v| v <= 1));
        }
        let ids: Vec<u32> = s.objects.iter().map(|o| o.instance_id).collect();
        assert_eq!(ids, (1..=s.objects.len() as u32).collect::<Vec<_>>());
    }
}

#[test]
fn masks_are_disjoint_and_occlusion_happens() {
    let cfg = SceneConfig { max_objects: 8, ..small() };
    let mut overlapped = 0;
    for index in 0..50 {
        let s = generate(2, index, &cfg);
        let mut count = vec![0u8; s.height * s.width];
        for o in &s.objects {
            for (c, &m) in count.iter_mut().zip(&o.mask) {
                *c += m;
            }
        }
        assert!(count.iter().all(|&c| c <= 1), "scene {index}: masks overlap");
        // Count objects whose box holds another object's pixels: overlaps, so masks were clipped.
        let map = s.instance_map();
        for o in &s.objects {
            let [x, y, w, h] = o.bbox.map(|v| v as usize);
            if (y..y + h).any(|yy| (x..x + w).any(|xx| map[yy * s.width + xx] != 0 && map[yy * s.width + xx] != o.instance_id)) {
                overlapped += 1;
            }
        }
    }
    assert!(overlapped > 10, "occlusion should be common, saw {overlapped}");

    // Without occlusion nothing touches: every object's full coverage is visible.
    let cfg = SceneConfig { occlusion: false, min_visible_fraction: 1.0, ..small() };
    let total: usize = (0..30).map(|i| generate(3, i, &cfg).objects.len()).sum();
    assert!(total >= 30, "non-overlapping scenes keep their objects, got {total}");
}

#[test]
fn pixels_follow_the_labels() {
    // Flat colours: each object's pixels are exactly its colour, the rest exactly the background.
    let cfg = SceneConfig { texture: false, ..small() };
    for index in 0..30 {
        let s = generate(4, index, &cfg);
        let map = s.instance_map();
        for y in 0..s.height {
            for x in 0..s.width {
                let p = pixel(&s, x, y);
                match map[y * s.width + x] {
                    0 => assert_eq!(p, s.background),
                    id => {
                        let o = &s.objects[id as usize - 1];
                        assert_eq!(p, o.color);
                        assert_eq!(o.texture, Texture::Solid);
                        let d = (0..3).map(|c| (p[c] - s.background[c]).abs()).fold(0.0, f32::max);
                        assert!(d >= 0.2, "object colour {p:?} too close to background {:?}", s.background);
                    }
                }
            }
        }
    }
    // Textured: object pixels take one of the object's two colours.
    let cfg = small();
    let mut textured = 0;
    for index in 0..30 {
        let s = generate(5, index, &cfg);
        let map = s.instance_map();
        for o in &s.objects {
            let second = match o.texture {
                Texture::Solid => o.color,
                Texture::Stripes { color2, .. } | Texture::Checker { color2, .. } => {
                    textured += 1;
                    color2
                }
            };
            for q in (0..map.len()).filter(|&q| map[q] == o.instance_id) {
                let p = pixel(&s, q % s.width, q / s.width);
                assert!(p == o.color || p == second, "pixel {p:?} is neither {:?} nor {second:?}", o.color);
            }
        }
    }
    assert!(textured > 10);
}

#[test]
fn values_in_unit_range_and_tensor_shape() {
    let cfg = small();
    for index in 0..20 {
        let s = generate(6, index, &cfg);
        assert_eq!(s.image.len(), 3 * 64 * 64);
        assert!(s.image.iter().all(|v| (0.0..=1.0).contains(v)));
    }
    let s = generate(6, 0, &cfg);
    let t = s.to_tensor();
    assert_eq!(t.size(), vec![3, 64, 64]);
    assert_eq!(t.kind(), tch::Kind::Float);
    let back: Vec<f32> = Vec::try_from(t.flatten(0, -1)).unwrap();
    assert_eq!(back, s.image);
}

#[test]
fn every_class_appears() {
    let cfg = small();
    let mut seen = [0usize; ShapeClass::COUNT];
    for index in 0..100 {
        for o in generate(9, index, &cfg).objects {
            seen[o.class.id()] += 1;
        }
    }
    assert!(seen.iter().all(|&n| n >= 20), "class counts {seen:?}");
    for c in ShapeClass::ALL {
        assert!(!c.name().is_empty());
    }
    // A restricted class list is honoured.
    let only = SceneConfig { classes: vec![ShapeClass::Ring], ..small() };
    assert!((0..10).flat_map(|i| generate(9, i, &only).objects).all(|o| o.class == ShapeClass::Ring));
}

#[test]
fn coco_json_scores_perfect_against_itself() {
    let cfg = small();
    let scenes: Vec<Scene> = (0..8).map(|i| generate(11, i, &cfg)).collect();
    let gt_json = to_coco(&scenes);
    let gt = coco::parse_gt(&gt_json.to_string()).unwrap();
    let n: usize = scenes.iter().map(|s| s.objects.len()).sum();
    assert_eq!(gt.annotations.len(), n);
    assert_eq!(gt.categories.len(), ShapeClass::COUNT);

    // The RLE decodes back to the mask.
    let mut a = 0;
    for (k, s) in scenes.iter().enumerate() {
        for o in &s.objects {
            let ann = &gt.annotations[a];
            a += 1;
            let rle = coco::decode_segmentation(ann.segmentation.as_ref().unwrap(), &gt.images[k]).unwrap();
            assert_eq!(rle.area() as usize, o.area);
            let mut decoded = vec![0u8; s.height * s.width];
            let (mut p, mut v) = (0usize, 0u8);
            for &c in &rle.counts {
                for i in p..p + c as usize {
                    let (x, y) = (i / s.height, i % s.height);
                    decoded[y * s.width + x] = v;
                }
                p += c as usize;
                v ^= 1;
            }
            assert_eq!(decoded, o.mask);
            assert_eq!(ann.area, o.area as f64);
        }
    }

    let dets = |with_box: bool| -> Vec<Detection> {
        gt.annotations
            .iter()
            .map(|g| Detection {
                image_id: g.image_id,
                category_id: g.category_id,
                bbox: if with_box { g.bbox } else { None },
                segmentation: if with_box { None } else { g.segmentation.clone() },
                score: 1.0,
            })
            .collect()
    };
    let bbox = coco::evaluate(&gt, &dets(true), IouType::Bbox).unwrap();
    assert!((bbox.ap - 1.0).abs() < 1e-12, "{}", bbox.summary());
    let segm = coco::evaluate(&gt, &dets(false), IouType::Segm).unwrap();
    assert!((segm.ap - 1.0).abs() < 1e-12, "{}", segm.summary());
}

/// Throughput: `cargo test --release --test shapes -- --ignored --nocapture`.
#[test]
#[ignore]
fn time_1000_scenes() {
    let cfg = SceneConfig::default();
    let t = std::time::Instant::now();
    let objects: usize = (0..1000).map(|i| generate(0, i, &cfg).objects.len()).sum();
    println!("1000 scenes of 128x128 ({objects} objects): {:.3} s", t.elapsed().as_secs_f64());
}
