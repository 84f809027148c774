//! usync device queries, client side: which devices each user has, so a
//! message can be encrypted for every one of them. Builders and parsers only.

use crate::wa::binary::Node;
use crate::wa::jid::Jid;

/// One user's devices from a usync answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserDevices {
    /// The bare user JID.
    pub user: Jid,
    /// Device ids (0 = the phone), with their ADV key index when given.
    pub devices: Vec<(u16, Option<u32>)>,
    /// The user's LID, when the server revealed it.
    pub lid: Option<Jid>,
}

impl UserDevices {
    /// Device JIDs a message must be encrypted for. Companions without a key
    /// index are skipped, as WhatsApp Web does: their identity is not
    /// vouched for by the account.
    pub fn device_jids(&self) -> Vec<Jid> {
        self.devices
            .iter()
            .filter(|(id, key_index)| *id == 0 || key_index.is_some())
            .map(|(id, _)| {
                let mut jid = self.user.clone();
                jid.device = *id;
                jid
            })
            .collect()
    }
}

/// Why a usync answer could not be read.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum UsyncError {
    #[error("usync answer has no {0}")]
    Missing(&'static str),
    #[error("device id {0:?} is not a number below 65536")]
    DeviceId(String),
}

/// `<iq xmlns=usync type=get>` asking for the devices of `users` (bare JIDs).
pub fn device_query(users: &[Jid], sid: &str, with_lid: bool) -> Node {
    let mut query = vec![Node::new("devices").attr("version", "2")];
    if with_lid {
        query.push(Node::new("lid"));
    }
    Node::new("iq")
        .attr("xmlns", "usync")
        .attr("type", "get")
        .attr("to", Jid::server_jid())
        .children(vec![Node::new("usync")
            .attr("context", "message")
            .attr("mode", "query")
            .attr("sid", sid.to_owned())
            .attr("last", "true")
            .attr("index", "0")
            .children(vec![
                Node::new("query").children(query),
                Node::new("list").children(
                    users
                        .iter()
                        .map(|u| Node::new("user").attr("jid", u.to_non_ad()))
                        .collect(),
                ),
            ])])
}

/// Reads the device lists from a usync answer.
pub fn parse_devices(result: &Node) -> Result<Vec<UserDevices>, UsyncError> {
    let list = result
        .child("usync")
        .ok_or(UsyncError::Missing("usync"))?
        .child("list")
        .ok_or(UsyncError::Missing("list"))?;
    let mut out = Vec::new();
    for user in list.child_nodes().iter().filter(|n| n.tag() == "user") {
        let Some(jid) = user.attr_jid("jid") else {
            continue;
        };
        let mut devices = Vec::new();
        if let Some(device_list) = user.child("devices").and_then(|d| d.child("device-list")) {
            for device in device_list
                .child_nodes()
                .iter()
                .filter(|d| d.tag() == "device")
            {
                let raw = device.attr_string("id").unwrap_or_default();
                let id: u16 = raw.parse().map_err(|_| UsyncError::DeviceId(raw.clone()))?;
                let key_index = device
                    .attr_string("key-index")
                    .and_then(|k| k.parse::<u32>().ok());
                devices.push((id, key_index));
            }
        }
        let lid = user.child("lid").and_then(|l| l.attr_jid("val"));
        out.push(UserDevices {
            user: jid.to_non_ad(),
            devices,
            lid,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wa::binary;

    fn answer(users: Vec<Node>) -> Node {
        Node::new("iq").attr("type", "result").children(vec![
            Node::new("usync").children(vec![Node::new("list").children(users)])
        ])
    }

    #[test]
    fn query_shape() {
        let peer: Jid = "15550001111:3@s.whatsapp.net".parse().expect("jid");
        let q = device_query(&[peer], "sid-1", true);
        let q = binary::decode(&binary::encode(&q)).expect("round trip");
        let usync = q.child("usync").expect("usync");
        assert_eq!(usync.attr_str("context"), Some("message"));
        let query = usync.child("query").expect("query");
        assert_eq!(
            query.child("devices").and_then(|d| d.attr_str("version")),
            Some("2")
        );
        assert!(query.child("lid").is_some());
        let user = &usync.child("list").expect("list").child_nodes()[0];
        assert_eq!(
            user.attr_jid("jid").map(|j| j.to_string()).as_deref(),
            Some("15550001111@s.whatsapp.net")
        );
    }

    #[test]
    fn parses_devices_and_filters_unsigned_companions() {
        let user = Node::new("user")
            .attr(
                "jid",
                "15550001111@s.whatsapp.net".parse::<Jid>().expect("jid"),
            )
            .children(vec![
                Node::new("devices").children(vec![Node::new("device-list").children(vec![
                    Node::new("device").attr("id", "0"),
                    Node::new("device").attr("id", "5").attr("key-index", "1"),
                    Node::new("device").attr("id", "7"),
                ])]),
                Node::new("lid").attr("val", "99@lid".parse::<Jid>().expect("lid")),
            ]);
        let empty = Node::new("user").attr(
            "jid",
            "15550002222@s.whatsapp.net".parse::<Jid>().expect("jid"),
        );
        let parsed = parse_devices(
            &binary::decode(&binary::encode(&answer(vec![user, empty]))).expect("rt"),
        )
        .expect("parses");
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].devices, vec![(0, None), (5, Some(1)), (7, None)]);
        assert_eq!(
            parsed[0].lid.as_ref().map(ToString::to_string).as_deref(),
            Some("99@lid")
        );
        let jids: Vec<String> = parsed[0]
            .device_jids()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            jids,
            ["15550001111@s.whatsapp.net", "15550001111:5@s.whatsapp.net"]
        );
        assert!(parsed[1].devices.is_empty());
    }

    #[test]
    fn rejects_bad_answers() {
        assert_eq!(
            parse_devices(&Node::new("iq")),
            Err(UsyncError::Missing("usync"))
        );
        let bad = Node::new("user")
            .attr("jid", "1@s.whatsapp.net".parse::<Jid>().expect("jid"))
            .children(vec![Node::new("devices")
                .children(vec![Node::new("device-list")
                    .children(vec![Node::new("device").attr("id", "70000")])])]);
        assert_eq!(
            parse_devices(&answer(vec![bad])),
            Err(UsyncError::DeviceId("70000".into()))
        );
    }
}
