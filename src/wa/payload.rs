//! ClientPayload construction: what a companion tells the server in the Noise
//! ClientFinish, for registration (a new device) and for login.

use md5::{Digest, Md5};
use prost::Message;

use crate::proto::wa::client_payload::{
    self, user_agent, web_info, DevicePairingRegistrationData, UserAgent, WebInfo,
};
use crate::proto::wa::{device_props, ClientPayload, DeviceProps};
use crate::wa::creds::{Credentials, DJB_KEY_TYPE};

/// WhatsApp Web version we announce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaVersion(pub u32, pub u32, pub u32);

impl WaVersion {
    /// The version current WhatsApp Web clients announce.
    pub const CURRENT: WaVersion = WaVersion(2, 3000, 1_023_223_821);
}

impl std::fmt::Display for WaVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// How this companion describes itself.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    pub version: WaVersion,
    /// Shown on the phone's "Linked devices" list.
    pub os: String,
    pub platform_type: device_props::PlatformType,
    /// Asks the phone, at pairing, for its whole history (`requireFullSync`
    /// in `DeviceProps`) instead of the recent part it sends by default.
    pub full_history: bool,
}

impl Default for DeviceInfo {
    fn default() -> Self {
        Self {
            version: WaVersion::CURRENT,
            os: "wagate".to_owned(),
            platform_type: device_props::PlatformType::Chrome,
            full_history: false,
        }
    }
}

fn base_payload(info: &DeviceInfo) -> ClientPayload {
    ClientPayload {
        user_agent: Some(UserAgent {
            platform: Some(user_agent::Platform::Web as i32),
            app_version: Some(user_agent::AppVersion {
                primary: Some(info.version.0),
                secondary: Some(info.version.1),
                tertiary: Some(info.version.2),
                ..Default::default()
            }),
            mcc: Some("000".into()),
            mnc: Some("000".into()),
            os_version: Some("0.1".into()),
            manufacturer: Some(String::new()),
            device: Some("Desktop".into()),
            os_build_number: Some("0.1".into()),
            release_channel: Some(user_agent::ReleaseChannel::Release as i32),
            locale_language_iso_639_1: Some("en".into()),
            locale_country_iso_3166_1_alpha_2: Some("US".into()),
            ..Default::default()
        }),
        web_info: Some(WebInfo {
            web_sub_platform: Some(web_info::WebSubPlatform::WebBrowser as i32),
            ..Default::default()
        }),
        connect_type: Some(client_payload::ConnectType::WifiUnknown as i32),
        connect_reason: Some(client_payload::ConnectReason::UserActivated as i32),
        ..Default::default()
    }
}

/// Payload of a device that is not paired yet: it carries the keys the phone
/// will vouch for.
pub fn registration_payload(creds: &Credentials, info: &DeviceInfo) -> Vec<u8> {
    let props = DeviceProps {
        os: Some(info.os.clone()),
        version: Some(device_props::AppVersion {
            primary: Some(0),
            secondary: Some(1),
            tertiary: Some(0),
            ..Default::default()
        }),
        platform_type: Some(info.platform_type as i32),
        require_full_sync: Some(info.full_history),
        history_sync_config: None,
    };
    let build_hash = Md5::digest(info.version.to_string().as_bytes());
    let spk_id = creds.signed_prekey.id.to_be_bytes();
    let mut payload = base_payload(info);
    payload.passive = Some(false);
    payload.pull = Some(false);
    payload.device_pairing_data = Some(DevicePairingRegistrationData {
        e_regid: Some(creds.registration_id.to_be_bytes().to_vec()),
        e_keytype: Some(vec![DJB_KEY_TYPE]),
        e_ident: Some(creds.identity_key.public.to_vec()),
        e_skey_id: Some(spk_id[1..].to_vec()),
        e_skey_val: Some(creds.signed_prekey.key.public.to_vec()),
        e_skey_sig: Some(creds.signed_prekey.signature.to_vec()),
        build_hash: Some(build_hash.to_vec()),
        device_props: Some(props.encode_to_vec()),
    });
    payload.encode_to_vec()
}

/// Why a login payload cannot be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PayloadError {
    #[error("device is not paired")]
    NotPaired,
    #[error("own JID user {0:?} is not a phone number")]
    BadUser(String),
}

/// Payload of a paired device logging in again.
pub fn login_payload(creds: &Credentials, info: &DeviceInfo) -> Result<Vec<u8>, PayloadError> {
    let account = creds.account.as_ref().ok_or(PayloadError::NotPaired)?;
    let username: u64 = account
        .jid
        .user
        .parse()
        .map_err(|_| PayloadError::BadUser(account.jid.user.clone()))?;
    let mut payload = base_payload(info);
    payload.username = Some(username);
    payload.device = Some(u32::from(account.jid.device));
    payload.passive = Some(true);
    payload.pull = Some(true);
    payload.lid_db_migrated = Some(false);
    if !creds.push_name.is_empty() {
        payload.push_name = Some(creds.push_name.clone());
    }
    Ok(payload.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn registration_carries_keys() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let creds = Credentials::generate(&mut rng);
        let p =
            ClientPayload::decode(registration_payload(&creds, &DeviceInfo::default()).as_slice())
                .expect("decodes");
        let reg = p.device_pairing_data.expect("pairing data");
        assert_eq!(
            reg.e_regid.as_deref(),
            Some(&creds.registration_id.to_be_bytes()[..])
        );
        assert_eq!(reg.e_keytype.as_deref(), Some(&[5u8][..]));
        assert_eq!(reg.e_skey_id.as_deref(), Some(&[0u8, 0, 1][..]));
        assert_eq!(reg.e_ident.as_deref(), Some(&creds.identity_key.public[..]));
        assert_eq!(reg.build_hash.map(|h| h.len()), Some(16));
        assert!(p.username.is_none());
        assert_eq!(p.passive, Some(false));
    }

    #[test]
    fn login_needs_pairing() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let creds = Credentials::generate(&mut rng);
        assert_eq!(
            login_payload(&creds, &DeviceInfo::default()),
            Err(PayloadError::NotPaired)
        );
    }
}
