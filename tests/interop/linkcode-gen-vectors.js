// Makes tests/vectors/linkcode/baileys.json: link-code pairing material
// computed by Baileys for fixed inputs: the code from 5 bytes, the
// PBKDF2/AES-CTR wrapping of an ephemeral key, the AES-GCM key bundle and
// the ADV secret the companion derives.
// Run from tests/interop: node linkcode-gen-vectors.js > ../vectors/linkcode/baileys.json
const { bytesToCrockford } = require('baileys/lib/Utils/generics');
const {
  derivePairingCodeKey, aesEncryptCTR, aesEncryptGCM, hkdf, Curve,
} = require('baileys/lib/Utils/crypto');
const { getPublicFromPrivateKey } = require('libsignal/src/curve');

const fill = (n, f) => Buffer.alloc(n).map((_, i) => f(i) & 0xff);
const pub = (priv) => Buffer.from(getPublicFromPrivateKey(priv)).slice(1);

(async () => {
  const codeBytes = Buffer.from([0x3e, 0x91, 0x07, 0xc4, 0x5b]);
  const code = bytesToCrockford(codeBytes);
  const salt = fill(32, (i) => i * 3 + 1);
  const iv = fill(16, (i) => 0xf0 - i);
  const companionEphemeralPriv = fill(32, (i) => i * 5 + 2);
  const companionEphemeralPub = pub(companionEphemeralPriv);
  const codeKey = await derivePairingCodeKey(code, salt);
  const wrapped = Buffer.concat([salt, iv, aesEncryptCTR(companionEphemeralPub, codeKey, iv)]);

  const primaryEphemeralPriv = fill(32, (i) => i * 11 + 7);
  const companionIdentityPriv = fill(32, (i) => i * 13 + 3);
  const primaryIdentityPriv = fill(32, (i) => i * 17 + 9);
  const companionIdentityPub = pub(companionIdentityPriv);
  const primaryIdentityPub = pub(primaryIdentityPriv);
  const ephemeralShared = Curve.sharedKey(companionEphemeralPriv, pub(primaryEphemeralPriv));
  const advRandom = fill(32, (i) => 0x80 + i);
  const bundleSalt = fill(32, (i) => 0x40 + i * 2);
  const bundleNonce = fill(12, (i) => 0x20 + i);
  const bundleKey = await hkdf(ephemeralShared, 32, {
    salt: bundleSalt, info: 'link_code_pairing_key_bundle_encryption_key',
  });
  const bundle = Buffer.concat([
    bundleSalt, bundleNonce,
    aesEncryptGCM(Buffer.concat([companionIdentityPub, primaryIdentityPub, advRandom]),
      bundleKey, bundleNonce, Buffer.alloc(0)),
  ]);
  const identityShared = Curve.sharedKey(companionIdentityPriv, primaryIdentityPub);
  const advSecret = await hkdf(Buffer.concat([ephemeralShared, identityShared, advRandom]), 32,
    { info: 'adv_secret' });
  const hex = (b) => Buffer.from(b).toString('hex');
  console.log(JSON.stringify({
    code_bytes: hex(codeBytes),
    code,
    salt: hex(salt),
    iv: hex(iv),
    companion_ephemeral_private: hex(companionEphemeralPriv),
    companion_ephemeral_public: hex(companionEphemeralPub),
    code_key: hex(codeKey),
    wrapped_companion_ephemeral: hex(wrapped),
    primary_ephemeral_private: hex(primaryEphemeralPriv),
    companion_identity_private: hex(companionIdentityPriv),
    primary_identity_private: hex(primaryIdentityPriv),
    ephemeral_shared: hex(ephemeralShared),
    adv_random: hex(advRandom),
    bundle_salt: hex(bundleSalt),
    bundle_nonce: hex(bundleNonce),
    wrapped_key_bundle: hex(bundle),
    adv_secret: hex(advSecret),
  }, null, 1));
})();
