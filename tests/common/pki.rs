//! Certificates for TLS tests, made at test time with Debian's openssl: a CA, a second
//! ("rogue") CA, server certificates for 127.0.0.1 (one with the wrong host), a client
//! certificate, and a hashed CA directory.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::TempDir;

/// A small PKI in a temp dir (EC P-256 keys: fast to make):
/// - `ca.pem`: the CA we trust; `ca-dir/`: the same, `openssl rehash`ed;
/// - `server.pem`: for IP 127.0.0.1 (subjectAltName), signed by the CA;
/// - `wrong-host.pem`: signed by the CA, subjectAltName IP 127.0.0.9, but CN=127.0.0.1;
/// - `client.pem`: a client certificate signed by the CA;
/// - `rogue-ca.pem` + `rogue-server.pem`: another CA and its certificate for 127.0.0.1.
///
/// Each `X.pem` has its key in `X.key`.
pub struct Pki {
    dir: TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        let pki = Pki {
            dir: TempDir::new("pki"),
        };
        pki.make_ca("ca", "ValkeyAUTH Test CA");
        pki.make_ca("rogue-ca", "Rogue CA");
        pki.make_leaf(
            "server",
            "ca",
            "127.0.0.1",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
            1,
        );
        pki.make_leaf(
            "wrong-host",
            "ca",
            "127.0.0.1",
            "subjectAltName=IP:127.0.0.9\nextendedKeyUsage=serverAuth\n",
            2,
        );
        pki.make_leaf(
            "client",
            "ca",
            "valkeyauth-client",
            "extendedKeyUsage=clientAuth\n",
            3,
        );
        pki.make_leaf(
            "rogue-server",
            "rogue-ca",
            "127.0.0.1",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
            4,
        );
        let ca_dir = pki.path("ca-dir");
        fs::create_dir(&ca_dir).expect("mkdir ca-dir");
        fs::copy(pki.path("ca.pem"), ca_dir.join("ca.pem")).expect("copy ca.pem");
        openssl(&["rehash", &pki.arg("ca-dir")]);
        pki
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `path(name)` as a string, for openssl's command line (temp paths are UTF-8).
    pub fn arg(&self, name: &str) -> String {
        self.path(name)
            .to_str()
            .expect("UTF-8 temp path")
            .to_owned()
    }

    fn make_ca(&self, name: &str, cn: &str) {
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "3",
            "-subj",
            &format!("/CN={cn}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &self.arg(&format!("{name}.key")),
            "-out",
            &self.arg(&format!("{name}.pem")),
        ]);
    }

    fn make_leaf(&self, name: &str, ca: &str, cn: &str, extensions: &str, serial: u32) {
        let (csr, ext) = (format!("{name}.csr"), format!("{name}.ext"));
        fs::write(
            self.path(&ext),
            format!("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n{extensions}"),
        )
        .expect("write ext");
        openssl(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            &self.arg(&format!("{name}.key")),
            "-out",
            &self.arg(&csr),
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            &self.arg(&csr),
            "-CA",
            &self.arg(&format!("{ca}.pem")),
            "-CAkey",
            &self.arg(&format!("{ca}.key")),
            "-set_serial",
            &serial.to_string(),
            "-days",
            "2",
            "-extfile",
            &self.arg(&ext),
            "-out",
            &self.arg(&format!("{name}.pem")),
        ]);
    }
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl (Debian package openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
