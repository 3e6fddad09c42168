// The page's one error line: the API's stable code and its message, as the API sent them.
const box = () => document.getElementById("error");

export function showError(error) {
  const el = box();
  el.replaceChildren();
  const code = document.createElement("code");
  code.textContent = error.code || "error";
  el.append(code, ": ", error.message || String(error));
  el.hidden = false;
  if (error.code === "unauthorized") {
    document.querySelector("details.settings").open = true;
    document.getElementById("api-key").focus();
  }
}

export function clearError() {
  box().hidden = true;
  box().replaceChildren();
}
