// Renders /openapi.json with Swagger UI. A separate file, not an inline script, so the page's
// Content-Security-Policy can forbid inline scripts.
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "openapi.json",  // relative: works under any route prefix
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,  // the default badge would ask validator.swagger.io: nothing leaves this origin
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});
