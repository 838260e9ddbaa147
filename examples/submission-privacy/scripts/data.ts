import type { DataContext, HeaderEdit, Verdict } from "postern";

// Fields a mail program or the laptop's own MTA adds that name the machine, its address or its software.
const PRIVATE_FIELDS = ["Received", "X-Originating-IP", "X-Mailer", "User-Agent"];

// At the end of DATA: strip them, and say instead which certificate (and so which account) sent the
// message. Postern's own Received header (the one it adds, first) is not touched by any edit.
export default function data(ctx: DataContext): Verdict {
  const connection = ctx.connection;
  // Written for Postern's submission listener: a Postfix policy request's certificate has too little in it.
  if (connection.source !== "smtp") throw new Error("not a client of the submission listener"); // fails closed (4xx)
  const cert = connection.clientCertificate!; // clientCertificates: require
  const identity = connection.certificateIdentity ?? "unknown";
  // Exactly one From: (as mox requires on submission). Without one the message cannot be signed; with two, a
  // reader may be shown one author while DKIM and DMARC check the other. Refused here, not bounced later.
  const froms = ctx.data.headers.filter(([name]) => name.toLowerCase() === "from").length;
  if (froms !== 1) return reject(`Message must have exactly one From header, not ${froms}`, { code: 550, enhanced: "5.6.0" });
  const edits: HeaderEdit[] = PRIVATE_FIELDS.map((name) => ({ op: "remove", name }));
  edits.push(
    { op: "set", name: "X-Postern-Client-Cert", value: cert.fingerprint.sha256 },
    // A client's own claim of our results must not survive next to ours.
    { op: "remove", name: "Authentication-Results" },
    { op: "add", name: "Authentication-Results", value: `submit.example.com; auth=pass (TLS client certificate) smtp.auth=${identity}` },
  );
  return accept({ headers: edits });
}
