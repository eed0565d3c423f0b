//! The pictures as a user gets them: `bnc compile --emit dot|svg` (fused kernels as
//! clusters, folded BatchNorms annotated), `bnc train --plot` and `bnc compare`.

mod common;

use common::{TempDir, bnc, fails, ok, stderr, tiny_dataset};

/// The node names of `model` compiled for `mode` as the CLI compiles it.
fn node_names(model: &str, mode: bnc::Mode, no_fold: bool) -> Vec<String> {
    let g = bnc::load_model(model).unwrap();
    let opts = bnc::CompileOptions {
        passes: no_fold.then(|| {
            bnc::compiler::passes::inference_pipeline(false)
                .iter()
                .map(|s| s.to_string())
                .collect()
        }),
        ..Default::default()
    };
    let (g, _) = bnc::compile(g, mode, &opts).unwrap();
    g.node_ids()
        .into_iter()
        .map(|id| g.node(id).name.clone())
        .collect()
}

/// The DOT clusters: each `subgraph cluster_*`'s label and how many nodes it lists.
fn dot_clusters(dot: &str) -> Vec<(String, usize)> {
    dot.split("subgraph cluster_")
        .skip(1)
        .map(|c| {
            let body = &c[..c.find("  }").unwrap()];
            let label = body.split("label=\"").nth(1).unwrap();
            let label = label[..label.find('"').unwrap()].to_string();
            let members = body.lines().filter(|l| l.trim().starts_with('n')).count();
            (label, members)
        })
        .collect()
}

#[test]
fn emit_dot_shows_kernels_as_clusters_and_folded_batch_norms() {
    let dot = ok(&["compile", "models/lenet_bn.ir", "--emit", "dot"]);
    assert!(
        dot.starts_with("digraph") && dot.trim_end().ends_with('}'),
        "{dot}"
    );
    // The five kernels of plain LeNet, each around its fused ops.
    assert_eq!(
        dot_clusters(&dot),
        [
            ("conv1+act1+pool1".to_string(), 3),
            ("conv2+act2+pool2".to_string(), 3),
            ("fc1+act3".to_string(), 2),
            ("fc2+act4".to_string(), 2),
            ("fc3".to_string(), 1),
        ]
    );
    for (op, bn) in [
        ("conv1", "bn1"),
        ("conv2", "bn2"),
        ("fc1", "bn3"),
        ("fc2", "bn4"),
    ] {
        assert!(
            dot.contains(&format!("label=\"{op} (+{bn} folded)\\n")),
            "{op}: {dot}"
        );
    }
    assert!(!dot.contains("fc3 (+"), "{dot}");

    // Unfolded, BatchNorm is a scale_shift fused into its conv's kernel; nothing is folded.
    let dot = ok(&[
        "compile",
        "models/lenet_bn.ir",
        "--emit",
        "dot",
        "--no-fold",
    ]);
    assert!(!dot.contains("folded)"), "{dot}");
    assert_eq!(
        dot_clusters(&dot)[0],
        ("conv1+bn1+act1+pool1".to_string(), 4)
    );

    // In train mode the clusters are the forward layers of the training plan.
    let dot = ok(&[
        "compile",
        "models/lenet_bn.ir",
        "--emit",
        "dot",
        "--mode",
        "train",
    ]);
    let names: Vec<String> = dot_clusters(&dot).into_iter().map(|c| c.0).collect();
    assert_eq!(
        names,
        [
            "conv1+bn1+act1+pool1",
            "conv2+bn2+act2+pool2",
            "fc1+bn3+act3",
            "fc2+bn4+act4",
            "fc3"
        ]
    );

    // A pipeline the backend cannot lower is drawn without clusters, not refused.
    let dot = ok(&[
        "compile",
        "models/lenet_bn.ir",
        "--emit",
        "dot",
        "--passes",
        "infer-shapes",
    ]);
    assert!(!dot.contains("subgraph"), "{dot}");
}

/// Parses an SVG document and returns the titles of its node groups and kernel boxes.
fn svg_titles(svg: &str) -> (Vec<String>, Vec<String>) {
    let doc = roxmltree::Document::parse(svg).expect("the SVG is well-formed XML");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "svg");
    assert_eq!(
        root.tag_name().namespace(),
        Some("http://www.w3.org/2000/svg")
    );
    let title_of = |n: roxmltree::Node| {
        n.children()
            .find(|c| c.has_tag_name("title"))
            .and_then(|t| t.text())
            .unwrap_or_default()
            .to_string()
    };
    let nodes = root
        .descendants()
        .filter(|n| n.attribute("class") == Some("node"))
        .map(title_of)
        .collect();
    let kernels = root
        .descendants()
        .filter(|n| n.attribute("class") == Some("kernel"))
        .map(title_of)
        .collect();
    (nodes, kernels)
}

#[test]
fn emit_svg_is_well_formed_and_draws_every_node_and_kernel() {
    for (model, mode, no_fold) in [
        ("models/lenet_bn.ir", bnc::Mode::Infer, false),
        ("models/lenet_bn.ir", bnc::Mode::Infer, true),
        ("models/lenet_bn.ir", bnc::Mode::Train, false),
        ("models/resnet_bn.ir", bnc::Mode::Infer, false),
        ("models/mlp_bn.ir", bnc::Mode::Infer, false),
    ] {
        let mut args = vec!["compile", model, "--emit", "svg", "--mode", mode.name()];
        if no_fold {
            args.push("--no-fold");
        }
        let svg = ok(&args);
        let (mut drawn, kernels) = svg_titles(&svg);
        let mut expected = node_names(model, mode, no_fold);
        drawn.sort();
        expected.sort();
        assert_eq!(drawn, expected, "{args:?}");
        assert!(!kernels.is_empty(), "{args:?}: no kernel boxes");
        assert!(
            kernels.iter().all(|k| k.starts_with("kernel ")),
            "{kernels:?}"
        );
        if model.ends_with("lenet_bn.ir") && mode == bnc::Mode::Infer && !no_fold {
            assert_eq!(kernels.len(), 5, "{kernels:?}");
            assert!(svg.contains(">conv1 (+bn1 folded)</tspan>"), "{svg}");
        }
    }
}

fn write_metrics(dir: &TempDir, name: &str, rows: &[(f64, f64, f64, f64, f64)]) -> String {
    let epochs: Vec<serde_json::Value> = rows
        .iter()
        .enumerate()
        .map(|(i, &(loss, train, test, secs, ips))| {
            serde_json::json!({"epoch": i + 1, "train_loss": loss, "train_acc": train,
                "test_acc": test, "seconds": secs, "images_per_s": ips})
        })
        .collect();
    let path = dir.file(name);
    std::fs::write(&path, serde_json::json!({ "epochs": epochs }).to_string()).unwrap();
    path
}

#[test]
fn compare_prints_a_table_and_draws_both_runs() {
    let dir = TempDir::new("compare");
    let a = write_metrics(
        &dir,
        "lenet.json",
        &[
            (2.0, 0.2, 0.30, 6.0, 10000.0),
            (1.0, 0.6, 0.70, 6.5, 9000.0),
            (0.6, 0.7, 0.65, 7.0, 8500.0),
        ],
    );
    let b = write_metrics(
        &dir,
        "lenet_bn.json",
        &[
            (0.7, 0.7, 0.80, 9.0, 7000.0),
            (0.4, 0.85, 0.86, 9.0, 7000.0),
            (0.3, 0.9, 0.84, 9.0, 7000.0),
        ],
    );
    let svg = dir.file("compare.svg");
    let out = ok(&["compare", &a, &b, "-o", &svg]);
    let lines: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0][0], "run", "{out}");
    // Labels default to the file stems; final, best (and its epoch), mean seconds.
    assert_eq!(
        lines[1],
        ["lenet", "3", "0.6500", "0.7000", "2", "6.50"],
        "{out}"
    );
    assert_eq!(
        lines[2],
        ["lenet_bn", "3", "0.8400", "0.8600", "2", "9.00"],
        "{out}"
    );
    assert!(
        out.lines().nth(3).unwrap().starts_with(
            "lenet_bn vs lenet: test accuracy +0.1900 final, +0.1600 best; 1.38x the seconds per epoch"
        ),
        "{out}"
    );
    let text = std::fs::read_to_string(&svg).unwrap();
    let doc = roxmltree::Document::parse(&text).expect("well-formed SVG");
    let texts: Vec<&str> = doc.descendants().filter_map(|n| n.text()).collect();
    for label in [
        "lenet train loss",
        "lenet test acc",
        "lenet_bn train acc",
        "lenet_bn test acc",
        "epoch",
    ] {
        assert!(
            texts.iter().any(|t| t.trim() == label),
            "{label}: {texts:?}"
        );
    }

    // --labels and --json.
    let json = ok(&["compare", &a, &b, "--labels", "plain,bn", "--json"]);
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["runs"][1]["label"], "bn");
    assert_eq!(v["runs"][0]["best_epoch"], 2);
    assert!((v["epoch_seconds_ratio"].as_f64().unwrap() - 9.0 / 6.5).abs() < 1e-12);
}

#[test]
fn compare_errors_name_the_file_and_the_field() {
    let dir = TempDir::new("compare-errors");
    let good = write_metrics(&dir, "good.json", &[(1.0, 0.5, 0.5, 1.0, 1.0)]);
    let broken = dir.file("broken.json");
    std::fs::write(&broken, r#"{"epochs": [{"epoch": 1, "train_loss": 0.5}]}"#).unwrap();
    let e = fails(&["compare", &good, &broken]);
    assert!(
        e.contains("broken.json: epochs[0]: missing or non-numeric `train_acc`"),
        "{e}"
    );
    std::fs::write(&broken, "[1, 2").unwrap();
    let e = fails(&["compare", &good, &broken]);
    assert!(e.contains("broken.json: not a JSON metrics file"), "{e}");
    std::fs::write(&broken, r#"{"epochs": []}"#).unwrap();
    assert!(fails(&["compare", &good, &broken]).contains("the `epochs` array is empty"));
    let e = fails(&["compare", &good, &dir.file("none.json")]);
    assert!(e.contains("none.json"), "{e}");
    let e = fails(&["compare", &good, &good, "--labels", "a,b,c"]);
    assert!(e.contains("--labels takes two names"), "{e}");
    // Nothing half-written: a failed comparison leaves no figure behind.
    let svg = dir.file("never.svg");
    fails(&["compare", &good, &broken, "-o", &svg]);
    assert!(!std::path::Path::new(&svg).exists());
}

#[test]
fn train_plot_draws_the_curves_and_its_metrics_feed_compare() {
    let dir = TempDir::new("plot");
    tiny_dataset(dir.path(), 256, 64);
    let (json, svg) = (dir.file("m.json"), dir.file("curves.svg"));
    let o = bnc(&[
        "train",
        "models/lenet.ir",
        "--data",
        dir.path().to_str().unwrap(),
        "--epochs",
        "2",
        "--batch",
        "128",
        "--json",
        &json,
        "--plot",
        &svg,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&svg).unwrap();
    let doc = roxmltree::Document::parse(&text).expect("well-formed SVG");
    let texts: Vec<&str> = doc
        .descendants()
        .filter_map(|n| n.text())
        .map(str::trim)
        .collect();
    // d2l's animator: the three curves in the legend, an epoch axis with ticks 1 and 2.
    for label in ["train loss", "train acc", "test acc", "epoch", "1", "2"] {
        assert!(texts.contains(&label), "{label}: {texts:?}");
    }
    // One marker per curve and epoch.
    let markers = doc
        .descendants()
        .filter(|n| n.has_tag_name("circle"))
        .count();
    assert_eq!(markers, 3 * 2, "{text}");
    let out = ok(&["compare", &json, &json, "--labels", "a,b"]);
    assert!(out.contains("1.00x the seconds per epoch"), "{out}");
}

#[test]
fn the_readme_picture_of_lenet_bn_is_current() {
    // docs/lenet_bn.svg is what `bnc compile models/lenet_bn.ir --emit svg` prints; after a
    // change to the layout or the drawing, regenerate it with that command.
    let svg = ok(&["compile", "models/lenet_bn.ir", "--emit", "svg"]);
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/lenet_bn.svg");
    assert!(
        std::fs::read_to_string(path).unwrap() == svg,
        "docs/lenet_bn.svg is stale: bnc compile models/lenet_bn.ir --emit svg > docs/lenet_bn.svg"
    );
}

#[test]
fn compare_train_trains_both_models_then_compares() {
    let dir = TempDir::new("compare-train");
    tiny_dataset(dir.path(), 128, 32);
    let svg = dir.file("both.svg");
    let o = bnc(&[
        "compare",
        "models/lenet.ir",
        "models/lenet_bn.ir",
        "--train",
        "--epochs",
        "1",
        "--lr",
        "0.9,1.0",
        "--batch",
        "64",
        "--data",
        dir.path().to_str().unwrap(),
        "-o",
        &svg,
        "-q",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = common::stdout(&o);
    // Both training tables, then the comparison of two one-epoch runs.
    assert_eq!(out.matches("epoch train loss").count(), 2, "{out}");
    let rows: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("lenet ") || l.starts_with("lenet_bn  "))
        .collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert!(
        rows.iter()
            .all(|r| r.split_whitespace().nth(1) == Some("1")),
        "{out}"
    );
    roxmltree::Document::parse(&std::fs::read_to_string(&svg).unwrap()).expect("well-formed");
    // The training flags belong to --train.
    let o = bnc(&["compare", "a.json", "b.json", "--epochs", "3"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = fails(&[
        "compare",
        "models/lenet.ir",
        "models/lenet_bn.ir",
        "--train",
        "--lr",
        "1,2,3",
    ]);
    assert!(e.contains("--lr takes one rate or two"), "{e}");
}
