//! Memory of this process as `/proc/self/status` reports it (Linux); zeros
//! elsewhere.

/// Bytes of resident and virtual memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Memory {
    /// Resident set size (`VmRSS`).
    pub(crate) rss: u64,
    /// Data segment: heap and anonymous mappings (`VmData`).
    pub(crate) data: u64,
    /// Resident anonymous memory, i.e. heap in use (`RssAnon`).
    pub(crate) anon: u64,
    /// Resident file mappings: the binary and libraries (`RssFile`).
    pub(crate) file: u64,
}

pub(crate) fn current() -> Memory {
    std::fs::read_to_string("/proc/self/status")
        .map(|text| parse(&text))
        .unwrap_or_default()
}

fn parse(status: &str) -> Memory {
    let mut mem = Memory::default();
    for line in status.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let kib = value
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        let slot = match key {
            "VmRSS" => &mut mem.rss,
            "VmData" => &mut mem.data,
            "RssAnon" => &mut mem.anon,
            "RssFile" => &mut mem.file,
            _ => continue,
        };
        *slot = kib * 1024;
    }
    mem
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_status() {
        let mem = parse(
            "Name:\tx\nVmData:\t  300 kB\nVmRSS:\t  200 kB\nRssAnon:\t 150 kB\nRssFile:\t 50 kB\n",
        );
        assert_eq!(
            mem,
            Memory {
                rss: 204_800,
                data: 307_200,
                anon: 153_600,
                file: 51_200
            }
        );
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn reads_this_process() {
        assert!(current().rss > 0);
    }
}
