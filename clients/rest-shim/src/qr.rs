//! QR payloads drawn as PNG data URLs (`data:image/png;base64,...`), for the
//! webhooks, whose events carry only the QR string; and the QR forms the
//! gateways show (Baileys' bare `2@…` string, Venom's bare base64 PNG).

use base64::Engine;
use qrcode::{Color, EcLevel, QrCode};

/// Pixels per QR module.
const SCALE: usize = 8;
/// Quiet zone around the code, in modules (the QR standard asks for 4).
const QUIET: usize = 4;

/// Prefix of the link form of the pairing QR that WhatsApp Web shows now.
const LINK_PREFIX: &str = "https://wa.me/settings/linked_devices#";
/// Prefix of a PNG data URL.
const PNG_DATA_URL: &str = "data:image/png;base64,";

/// The pairing QR in Baileys' form, `2@ref,noise,identity,adv`, as Baileys
/// hands it to its `connection.update` listeners: the link prefix and the
/// fifth part (the companion platform) of the link form dropped. A phone
/// reads either form; other text is returned as it is.
pub(crate) fn baileys_form(qr: &str) -> &str {
    let Some(rest) = qr.strip_prefix(LINK_PREFIX) else {
        return qr;
    };
    match rest.match_indices(',').nth(3) {
        Some((i, _)) => &rest[..i],
        None => rest,
    }
}

/// The base64 of a PNG data URL (Venom's `base64` QR form).
pub(crate) fn bare_base64(data_url: &str) -> &str {
    data_url.strip_prefix(PNG_DATA_URL).unwrap_or(data_url)
}

pub(crate) fn png_data_url(text: &str) -> Result<String, String> {
    let code = QrCode::with_error_correction_level(text.as_bytes(), EcLevel::L)
        .map_err(|e| format!("cannot encode QR: {e}"))?;
    let modules = code.width();
    let side = (modules + 2 * QUIET) * SCALE;
    let mut pixels = vec![255u8; side * side];
    for (i, color) in code.to_colors().iter().enumerate() {
        if *color != Color::Dark {
            continue;
        }
        let (mx, my) = (i % modules, i / modules);
        for dy in 0..SCALE {
            let start = ((my + QUIET) * SCALE + dy) * side + (mx + QUIET) * SCALE;
            if let Some(run) = pixels.get_mut(start..start + SCALE) {
                run.fill(0);
            }
        }
    }
    let mut png_bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut png_bytes, side as u32, side as u32);
        encoder.set_color(png::ColorType::Grayscale);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder
            .write_header()
            .map_err(|e| format!("png header: {e}"))?;
        writer
            .write_image_data(&pixels)
            .map_err(|e| format!("png data: {e}"))?;
    }
    Ok(format!(
        "{PNG_DATA_URL}{}",
        base64::engine::general_purpose::STANDARD.encode(png_bytes)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baileys_form_drops_the_link_and_the_platform() {
        assert_eq!(
            baileys_form("https://wa.me/settings/linked_devices#2@r,n=,i=,a=,9"),
            "2@r,n=,i=,a="
        );
        assert_eq!(
            baileys_form("https://wa.me/settings/linked_devices#2@r,n=,i=,a="),
            "2@r,n=,i=,a="
        );
        assert_eq!(baileys_form("2@r,n=,i=,a="), "2@r,n=,i=,a=");
        assert_eq!(bare_base64("data:image/png;base64,iVBO"), "iVBO");
        assert_eq!(bare_base64("iVBO"), "iVBO");
    }

    #[test]
    fn draws_a_png() {
        let url = png_data_url("2@abc,def,ghi,jkl").expect("draws");
        let b64 = url.strip_prefix("data:image/png;base64,").expect("prefix");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64");
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    }
}
