// The dashboard's filters apply as soon as one changes.
(function () {
  "use strict";
  var form = document.getElementById("dash-filters");
  if (!form) { return; }
  form.addEventListener("change", function () { form.submit(); });
}());
