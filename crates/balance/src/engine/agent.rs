//! The agent check's reply: one line from a program on the server saying how it
//! wants to be treated (HAProxy's agent-check words, so existing agents work):
//! `up`/`ready`, `down`/`fail`/`stopped`, `drain`, `maint`, and a weight like `75%`,
//! in any combination separated by spaces or commas.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentState {
    Up,
    Down,
    /// Keep existing connections, take no new ones.
    Drain,
    /// Taken out for maintenance: nothing new.
    Maint,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentReport {
    pub state: Option<AgentState>,
    /// Percent of the configured weight.
    pub weight_percent: Option<u32>,
}

/// Parses a reply; an unknown word is an error naming it (and the check fails).
pub fn parse(line: &str) -> Result<AgentReport, String> {
    let line = line.trim();
    if line.is_empty() {
        return Err("the agent sent an empty reply".into());
    }
    let mut report = AgentReport::default();
    for word in line.split([' ', ',', '\t']).filter(|w| !w.is_empty()) {
        let lower = word.to_ascii_lowercase();
        let state = match lower.as_str() {
            "up" | "ready" => Some(AgentState::Up),
            "down" | "fail" | "failed" | "stopped" => Some(AgentState::Down),
            "drain" => Some(AgentState::Drain),
            "maint" => Some(AgentState::Maint),
            _ => None,
        };
        if let Some(s) = state {
            report.state = Some(s);
            continue;
        }
        if let Some(pct) = lower.strip_suffix('%') {
            match pct.parse::<u32>() {
                Ok(p) if p <= 1000 => {
                    report.weight_percent = Some(p);
                    continue;
                }
                _ => {
                    return Err(format!(
                        "the agent sent a bad weight {word:?} (0% to 1000%)"
                    ))
                }
            }
        }
        return Err(format!("the agent sent an unknown word {word:?}"));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_and_weights() {
        assert_eq!(parse("up\n").unwrap().state, Some(AgentState::Up));
        let r = parse("ready 50%").unwrap();
        assert_eq!(
            (r.state, r.weight_percent),
            (Some(AgentState::Up), Some(50))
        );
        assert_eq!(
            parse("75%").unwrap(),
            AgentReport {
                state: None,
                weight_percent: Some(75)
            }
        );
        assert_eq!(parse("DRAIN").unwrap().state, Some(AgentState::Drain));
        assert_eq!(parse("maint,0%").unwrap().state, Some(AgentState::Maint));
        assert!(parse("").unwrap_err().contains("empty"));
        assert!(parse("up sideways").unwrap_err().contains("sideways"));
        assert!(parse("5000%").is_err());
    }
}
