//! The Prometheus alert rules pass their unit tests
//! (`deploy/prometheus/alerts.test.yml`): every alert fires on its series,
//! including a counter's first event, and stays quiet on the other.

use std::process::Command;

#[test]
fn alert_rules_pass_their_promtool_unit_tests() {
    let root = env!("CARGO_MANIFEST_DIR");
    let tests = format!("{root}/deploy/prometheus/alerts.test.yml");
    let out = match Command::new("promtool")
        .args(["test", "rules", &tests])
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            assert!(
                std::env::var_os("MEMGATE_REQUIRE_PROMTOOL").is_none(),
                "MEMGATE_REQUIRE_PROMTOOL is set but promtool cannot run ({e}); \
                 install it (Debian: apt-get install prometheus)"
            );
            eprintln!(
                "\n*** SKIPPED: promtool is not installed ({e}), so the alert rules were NOT \
                 tested; install it (Debian: apt-get install prometheus) ***\n"
            );
            return;
        }
    };
    assert!(
        out.status.success(),
        "promtool test rules {tests} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
