//! Records the commit the binary is built from (`--version`, the
//! `event_sanitizer_build_info` metric): `git rev-parse`, or `unknown`
//! outside a git checkout (an image built from a source archive).

fn main() {
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=EVENT_SANITIZER_COMMIT={commit}");
    // Built again when HEAD moves: HEAD itself (a checkout) and the file
    // of the branch it names (a commit; the directory of refs would not
    // change), only paths that exist: a missing one would run this script
    // on every build.
    let mut watch = vec![".git/HEAD".to_string(), ".git/packed-refs".to_string()];
    if let Ok(head) = std::fs::read_to_string(".git/HEAD") {
        if let Some(branch) = head.trim().strip_prefix("ref: ") {
            watch.push(format!(".git/{branch}"));
        }
    }
    for path in &watch {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
