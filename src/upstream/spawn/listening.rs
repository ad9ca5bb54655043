//! Whether a port is listened on by the process memgate started. A port that
//! accepts connections proves nothing: another process (a second memgate's
//! child, any local program) may hold it while memgate's own child failed to
//! bind it, and a scope's requests would then reach a stranger. The kernel's
//! socket table (`/proc/net/tcp*`) names the listening socket's inode, and the
//! child's process group (the child and what it forks) must hold that socket.

use std::collections::BTreeSet;

/// Inodes of the sockets listening on `port` (any local address, IPv4 or IPv6).
fn listening_inodes(port: u16) -> BTreeSet<u64> {
    const LISTEN: &str = "0A";
    let mut inodes = BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let local_port = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if *state == LISTEN
                && local_port == Some(port)
                && let Ok(inode) = inode.parse()
            {
                inodes.insert(inode);
            }
        }
    }
    inodes
}

/// The process group of `pid`, from `/proc/PID/stat` (the fields after the
/// command name, which may itself hold spaces and parentheses).
fn process_group(pid: &str) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(2)?.parse().ok()
}

/// Whether a process in group `pgid` listens on `port`.
pub fn group_listens_on(pgid: i32, port: u16) -> bool {
    let inodes = listening_inodes(port);
    if inodes.is_empty() {
        return false;
    }
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return false;
    };
    for entry in processes.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if process_group(pid) != Some(pgid) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let holds = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok())
                .is_some_and(|inode: u64| inodes.contains(&inode));
            if holds {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_is_found_in_its_own_group_only() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let own = process_group(&std::process::id().to_string()).expect("own group");
        assert!(group_listens_on(own, port));
        assert!(!group_listens_on(own + 1_000_000, port), "another group");
        drop(listener);
        assert!(!group_listens_on(own, port), "nobody listens any more");
    }
}
