//! `kestrel replay` on transcripts of scripted Qwen3 checkpoints: reproduction, divergence with
//! another model, an edited conversation, and the cache reuse of later turns.

mod support;

use support::*;

/// `kestrel replay TRANSCRIPT` with `extra` flags: exit code and stdout.
fn replay(transcript: &std::path::Path, extra: &[&str]) -> (i32, String) {
    let out = kestrel()
        .arg("replay")
        .args(extra)
        .arg(transcript)
        .output()
        .expect("replay");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let code = out.status.code().unwrap_or(-1);
    (
        code,
        format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)),
    )
}

#[test]
fn a_greedy_transcript_replays_and_another_model_diverges_where_it_differs() {
    let dir = tempfile::tempdir().expect("tmp");
    let transcript = dir.path().join("run.jsonl");
    let path = transcript.to_str().expect("path");
    // Thinking closed by the early stop (forced tokens), then the answer.
    let args = [
        "--temperature",
        "0",
        "--max-turn-tokens",
        "80",
        "--transcript",
        path,
    ];
    run_in(dir.path(), &endless_thinker(), json!({}), &args, "What?");
    let start: Value = std::fs::read_to_string(&transcript)
        .expect("transcript")
        .lines()
        .next()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .expect("start line");
    assert_eq!(
        start["options"]["max_turn_tokens"], 80,
        "options as JSON: {start}"
    );
    assert_eq!(start["options"]["first_tool_choice"], Value::Null);
    let (code, out) = replay(&transcript, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("turn 1: prompt re-renders to the recorded ids"),
        "{out}"
    );
    assert!(out.contains("greedy tokens regenerate") && out.contains("1 of 1 turns reproduce"));

    // A model that answers 43: the replay stops agreeing at the last digit.
    let other = dir.path().join("other");
    let script = Script::new().path(ENDLESS_THINKING);
    let after_stop = *script.ids(EARLY_STOP_TEXT).last().expect("early stop");
    let mut answer = vec![after_stop];
    answer.extend(
        ["The", " answer", " is", " 4", "3", "<|im_end|>"]
            .iter()
            .flat_map(|p| script.ids(p)),
    );
    script.path_ids(&answer).write(&other);
    let (code, out) = replay(&transcript, &["--model", other.to_str().expect("path")]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("diverges at generated token"), "{out}");
    assert!(
        out.contains("\"2\"") && out.contains("\"3\""),
        "names both tokens: {out}"
    );

    // A transcript whose conversation was edited no longer renders to its ids.
    let edited = std::fs::read_to_string(&transcript)
        .expect("transcript")
        .replace("What?", "Why?");
    std::fs::write(&transcript, edited).expect("edit");
    let (code, out) = replay(&transcript, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("prompt differs from the recorded ids at"),
        "{out}"
    );
}

#[test]
fn turns_after_a_tool_call_replay_with_the_recorded_cache_reuse() {
    let dir = tempfile::tempdir().expect("tmp");
    let transcript = dir.path().join("run.jsonl");
    let args = [
        "--no-think",
        "--temperature",
        "0",
        "--max-turn-tokens",
        "60",
        "--allow",
        "time/*",
        "--max-rounds",
        "1",
        "--transcript",
        transcript.to_str().expect("path"),
    ];
    run_in(dir.path(), &bare_json_caller(), time(), &args, "Time?");
    let (code, out) = replay(&transcript, &["--json"]);
    assert_eq!(code, 0, "{out}");
    let turns: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    assert_eq!(turns.len(), 2, "{out}");
    let reused = &turns[1]["turn"]["reused"];
    assert!(
        reused[0].as_u64().expect("reused") > 0,
        "the second turn reused the cache: {out}"
    );
    assert_eq!(reused[0], reused[1]);
}
